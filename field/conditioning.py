"""Per-sample conditions (class labels, text embeddings) bound to a field, one row per sample: trainers draw n
starts, solve the teacher on all n with the whole batch's conditions and fit on minibatches of `field.select(idx)`,
whose conditions follow the samples."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field.base import EvalPoint, Field, FieldOutput
from diffsolve.field.identity import identity_of_kwargs
from diffsolve.field.vector_field import floating_dtype_of
from diffsolve.field.wrappers import FieldWrapper, _network_of


def check_conditions(conditions: Any, name: str = "conditions") -> dict[str, torch.Tensor]:
    """Keyword tensors with one common leading (sample) dimension of at least one row.

    Args:
        conditions: `{keyword: tensor [n, ...]}`.
        name: what the caller calls them, for the messages (an argument or a flag).

    Returns:
        The conditions as a new dict.

    Raises:
        InvalidArgument: not a non-empty mapping of identifier -> tensor with a leading dimension, or the tensors
            disagree on the number of rows.
    """
    if not isinstance(conditions, Mapping) or not conditions:
        raise InvalidArgument(f"{name}: must be a non-empty mapping of model keyword -> tensor with one row per "
                              f"sample, got {type(conditions).__name__}")
    rows = {}
    for k, v in conditions.items():
        if not (isinstance(k, str) and k.isidentifier()):
            raise InvalidArgument(f"{name}: key {k!r} is not a keyword name")
        if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] == 0:
            raise InvalidArgument(f"{name}[{k!r}]: must be a tensor with a leading sample dimension of at least "
                                  f"one row, got {type(v).__name__}{tuple(getattr(v, 'shape', ()))}")
        rows[k] = int(v.shape[0])
    if len(set(rows.values())) > 1:
        raise InvalidArgument(f"{name}: every tensor needs the same number of rows (one per sample), got {rows}")
    return dict(conditions)


class Conditioned(FieldWrapper):
    """A field whose network gets per-sample keyword tensors: row i of each goes with sample i of the batch.

    `Conditioned(ClassifierFreeGuidance(field, 2.0, {"class_labels": null}), {"class_labels": labels})` samples
    `len(labels)` samples, sample i guided towards labels[i]. The batch must have exactly `condition_rows`
    samples; `select(idx)` is the field of the samples `idx` (what trainers fit minibatches on). Floating
    conditions are cast to the network's dtype (the float64 reference solve runs a float64 copy of the network, a
    half network takes half embeddings).

    The identity (the reference cache's key) hashes the conditions; the correction identity names only their
    keywords, so a correction tuned with these conditions applies to the same model with any others, and a
    guided field's scale and unconditional keywords stay part of it.

    Args:
        field: the field whose network takes the keywords (a VectorField or a wrapper such as guidance).
        conditions: `{keyword: tensor [n, ...]}`, one row per sample.

    Raises:
        InvalidArgument: `field` is not a Field, or the conditions are not tensors with one common row count.
    """

    def __init__(self, field: Field, conditions: Mapping[str, torch.Tensor]):
        super().__init__(field)
        self.conditions = check_conditions(conditions)

    @property
    def condition_rows(self) -> int:
        """The number of samples the conditions describe."""
        return int(next(iter(self.conditions.values())).shape[0])

    def select(self, index: Any) -> "Conditioned":
        """The field of the samples `index`: each condition's rows `index`, around the inner field's selection.

        Args:
            index: the rows (a 1-D integer tensor, a list of ints or a slice).

        Returns:
            A Conditioned field with those rows.
        """
        return Conditioned(self.inner.select(index), {k: v[index] for k, v in self.conditions.items()})

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        """The inner field's evaluation with the held conditions passed as keywords (a call's own keywords win).

        Floating conditions are cast to the network's floating dtype (else the state's) before the call.

        Args:
            x: The states, a batch of exactly `condition_rows` samples.
            p: The evaluation point (time and the schedule's coefficients there).
            kind: "x0" (the data prediction) or "velocity" (dx/dt in diffusion time).
            **kwargs: Further model keywords; they override conditions of the same name.

        Returns:
            FieldOutput: The inner field's output for `x` at `p`.

        Raises:
            InvalidArgument: The batch is not `condition_rows` samples.
        """
        if x.shape[0] != self.condition_rows:
            raise InvalidArgument(f"this field holds conditions for {self.condition_rows} samples but was asked for "
                                  f"{x.shape[0]}; sample exactly that many, or take `field.select(rows)` first")
        dtype = floating_dtype_of(_network_of(self.inner)) or x.dtype
        conds = {k: v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v
                 for k, v in self.conditions.items()}
        return self.inner.evaluate(x, p, kind, **{**conds, **kwargs})

    def own_identity(self) -> str | None:
        """The conditions' content hash (None when a value has no stable form)."""
        conds = identity_of_kwargs(self.conditions)
        return None if conds is None else f"conditions={conds}"

    def correction_identity(self) -> str | None:
        """The inner field's correction identity and the conditioning keywords, not their values."""
        inner = self.inner.correction_identity()
        return None if inner is None else f"Conditioned(keys={sorted(self.conditions)}, {inner})"
