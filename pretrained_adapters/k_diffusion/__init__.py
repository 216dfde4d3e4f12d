"""k-diffusion both ways: diffsolve solvers as k-diffusion sampler functions (outbound), k-diffusion and EDM
denoisers as fields (inbound).

Outbound: `sample_<name>(model, x, sigmas, ...)` with k-diffusion's signatures for k-diffusion's own names
(`sample_dpm_2` runs `dpm_solver_2`; see `functions`), and one function per other registered diffsolve solver.
A user who installed k-diffusion passes its `get_sigmas_*` and denoiser wrappers unchanged; k-diffusion itself is
never imported here. Inbound: `from_k_diffusion(model)`, which `Sampler(model)` also detects.
"""
from diffsolve.pretrained_adapters.k_diffusion.functions import (
    _sampler, sample_dpm_2, sample_dpm_2_ancestral, sample_dpm_adaptive, sample_dpm_fast, sample_dpmpp_2m,
    sample_dpmpp_2m_sde, sample_dpmpp_2s_ancestral, sample_dpmpp_3m_sde, sample_dpmpp_sde, sample_euler,
    sample_euler_ancestral, sample_heun, sample_lms, sampler_function, sampler_names)
from diffsolve.pretrained_adapters.k_diffusion.inbound import (EDMNetwork, detect, edm_sigma_range,
                                                               from_k_diffusion, is_edm_network,
                                                               is_k_diffusion_denoiser)
from diffsolve.pretrained_adapters.k_diffusion.outbound import (DIFFSOLVE_TO_K_DIFFUSION, K_DIFFUSION_TO_DIFFSOLVE,
                                                                sample, solver_name_of)

# every other registered diffsolve solver (tests check that this list matches the registry)
sample_amed = _sampler("amed")
sample_amed_plugin = _sampler("amed_plugin")
sample_bosh3 = _sampler("bosh3")
sample_consistency = _sampler("consistency")
sample_ddim = _sampler("ddim")
sample_ddim_eta = _sampler("ddim_eta")
sample_ddpm = _sampler("ddpm")
sample_deis = _sampler("deis")
sample_dpm_adaptive_12 = _sampler("dpm_adaptive_12")
sample_dpm_adaptive_23 = _sampler("dpm_adaptive_23")
sample_dpm_solver_2 = _sampler("dpm_solver_2")
sample_dpm_solver_3 = _sampler("dpm_solver_3")
sample_dpmpp_2s = _sampler("dpmpp_2s")
sample_dpmpp_3m = _sampler("dpmpp_3m")
sample_dpmpp_3s = _sampler("dpmpp_3s")
sample_edm_churn = _sampler("edm_churn")
sample_euler_churn = _sampler("euler_churn")
sample_ipndm = _sampler("ipndm")
sample_ipndm_v = _sampler("ipndm_v")
sample_learned_multistep = _sampler("learned_multistep")
sample_midpoint = _sampler("midpoint")
sample_odeint = _sampler("odeint")
sample_odeint_adaptive_heun = _sampler("odeint_adaptive_heun")
sample_odeint_bosh3 = _sampler("odeint_bosh3")
sample_odeint_dopri5 = _sampler("odeint_dopri5")
sample_odeint_dopri8 = _sampler("odeint_dopri8")
sample_pas = _sampler("pas")
sample_ralston = _sampler("ralston")
sample_restart = _sampler("restart")
sample_rk3 = _sampler("rk3")
sample_rk38 = _sampler("rk38")
sample_rk4 = _sampler("rk4")
sample_shortcut = _sampler("shortcut")
sample_tcd = _sampler("tcd")
sample_torchsde = _sampler("torchsde")
sample_torchsde_euler = _sampler("torchsde_euler")
sample_torchsde_milstein = _sampler("torchsde_milstein")
sample_torchsde_reversible_heun = _sampler("torchsde_reversible_heun")
sample_torchsde_srk = _sampler("torchsde_srk")
sample_unipc_bh1 = _sampler("unipc_bh1")
sample_unipc_bh2 = _sampler("unipc_bh2")

__all__ = ["K_DIFFUSION_TO_DIFFSOLVE", "DIFFSOLVE_TO_K_DIFFUSION", "sample", "sampler_function", "sampler_names",
           "solver_name_of", "from_k_diffusion", "is_k_diffusion_denoiser", "is_edm_network", "EDMNetwork",
           "edm_sigma_range", "detect"] + sorted(name for name in dict(globals()) if name.startswith("sample_"))
