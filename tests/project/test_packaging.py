"""The wheel installs one import namespace, `diffsolve`, and the public names import from it."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_has_only_the_diffsolve_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("diffsolve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"diffsolve", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for sub in ("solvers", "kernels", "pretrained_adapters", "bench", "models"):
        assert f"diffsolve/{sub}/__init__.py" in names
    assert not any(n.startswith("diffsolve/tests/") for n in names)


def test_public_imports():
    from diffsolve import Sampler, VectorField  # noqa: F401
    import diffsolve.problems  # noqa: F401
    import diffsolve.kernels  # noqa: F401
    import diffsolve.pretrained_adapters  # noqa: F401
    import diffsolve.solvers  # noqa: F401


@pytest.mark.slow
def test_core_imports_without_optional_packages():
    code = ("import sys; sys.modules['diffusers'] = None; sys.modules['triton'] = None; sys.modules['matplotlib'] = None\n"
            "import diffsolve, diffsolve.solvers, diffsolve.kernels, diffsolve.pretrained_adapters\n"
            "from diffsolve.problems import GaussianProblem\n"
            "out = diffsolve.Sampler(GaussianProblem.default(), 'euler', progress=False).run(steps=2, batch_size=1)\n"
            "print(out.nfe)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "2"
