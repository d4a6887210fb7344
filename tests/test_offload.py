"""Block streaming under a budget (nodegraph/offload.py through the model manager): a real diffusers
SD3 transformer stored in fp16 (memory-mapped from .safetensors) computes in fp32 on the CPU; with a
budget smaller than the model the materialised fp32 weights (tracked bytes, and the process's
anonymous RSS measured in a fresh interpreter) stay under the budget while the same model fully
loaded exceeds it, and the outputs are equal."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from nodegraph.models import ModelManager
from nodegraph.offload import Placement, find_blocks

diffusers = pytest.importorskip("diffusers")

MIB = 1024**2
#: 8 joint blocks of ~20 MiB each in fp32 (~158 MiB in all, ~79 MiB in the fp16 file)
CONFIG = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=8, attention_head_dim=64,
              num_attention_heads=6, joint_attention_dim=384, caption_projection_dim=384,
              pooled_projection_dim=64, out_channels=4, pos_embed_max_size=16)
BUDGET = 48 * MIB


def _inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(1, 6, 384, generator=g),
                pooled_projections=torch.randn(1, 64, generator=g), timestep=torch.tensor([500.0]))


@pytest.fixture(scope="module")
def fp16_file(tmp_path_factory):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = diffusers.SD3Transformer2DModel(**CONFIG).half()
    path = tmp_path_factory.mktemp("offload") / "sd3_tiny_fp16.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _loader(path, cast: bool):
    def load():
        from accelerate import init_empty_weights
        from safetensors.torch import load_file

        sd = load_file(str(path))  # memory-mapped
        if cast:
            sd = {k: v.float() for k, v in sd.items()}
        with init_empty_weights():
            net = diffusers.SD3Transformer2DModel.from_config(CONFIG)
        net.load_state_dict(sd, assign=True)
        return net.eval().requires_grad_(False)
    return load


def _run(manager: ModelManager, entry) -> torch.Tensor:
    with manager.use(entry) as net, torch.inference_mode():
        return net(**_inputs(), return_dict=False)[0].clone()


def test_blocks_are_the_transformer_blocks():
    net = diffusers.SD3Transformer2DModel(**CONFIG)
    assert [n for n, _ in find_blocks(net)] == [f"transformer_blocks.{i}" for i in range(8)]
    placement = Placement(net, torch.float32)
    # storage == compute dtype on the compute device: nothing is materialised
    assert placement.full_cost("cpu") == 0


def test_streamed_run_stays_under_the_budget_and_equals_the_full_model(fp16_file):
    full = ModelManager("cpu")
    ref = _run(full, full.load("m", _loader(fp16_file, cast=True), compute_dtype=torch.float32))

    unbudgeted = ModelManager("cpu")  # fp16 storage placed whole: all of it materialised in fp32
    entry = unbudgeted.load("m", _loader(fp16_file, cast=False), compute_dtype=torch.float32)
    out_whole = _run(unbudgeted, entry)
    assert unbudgeted.memory.peak > 3 * BUDGET  # the model does not fit the budget

    budgeted = ModelManager("cpu", vram_budget=BUDGET)
    entry = budgeted.load("m", _loader(fp16_file, cast=False), compute_dtype=torch.float32)
    out = _run(budgeted, entry)
    plan = entry.placement.plan("cpu", BUDGET)
    assert plan.streams and len(plan.streamed) >= 5, plan
    assert budgeted.memory.peak <= plan.peak_bound <= BUDGET
    assert budgeted.memory.current == 0  # every streamed block released after the run
    assert all(p.dtype == torch.float16 for p in entry.model.parameters())  # the storage is untouched
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(out_whole, ref, rtol=0, atol=0)
    # a second run streams again from the same storage
    torch.testing.assert_close(_run(budgeted, entry), ref, rtol=0, atol=0)
    assert entry.loads == 1


def test_lowvram_streams_every_block(fp16_file):
    manager = ModelManager("cpu", low_vram=True)
    entry = manager.load("m", _loader(fp16_file, cast=False), compute_dtype=torch.float32)
    _run(manager, entry)
    plan = entry.placement.plan("cpu", None, stream_all=True)
    assert len(plan.streamed) == 8 and not plan.kept
    assert manager.memory.peak <= plan.peak_bound < 2 * 21 * MIB


def test_free_releases_and_reloads(fp16_file):
    manager = ModelManager("cpu", vram_budget=BUDGET)
    entry = manager.load("m", _loader(fp16_file, cast=False), compute_dtype=torch.float32)
    _run(manager, entry)
    manager.free()
    assert entry.model is None and entry.placement is None and manager.memory.current == 0
    _run(manager, entry)
    assert entry.loads == 2


RSS_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import torch
    from accelerate import init_empty_weights
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import load_file
    from nodegraph.models import ModelManager

    mode, path, budget, config, out_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(1)

    def anon():
        return int(re.search(r"RssAnon:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(1, 6, 384, generator=g),
                  pooled_projections=torch.randn(1, 64, generator=g), timestep=torch.tensor([500.0]))
    with torch.inference_mode():  # warm the kernels' own buffers before the baseline
        torch.nn.functional.scaled_dot_product_attention(*[torch.randn(1, 6, 16, 64)] * 3)
        torch.nn.Linear(384, 384)(torch.randn(16, 384))
    base = anon()
    peak = [0]

    def sample(*_):
        peak[0] = max(peak[0], anon() - base)

    def loader():
        sd = load_file(path)
        if mode == "full":
            sd = {k: v.float() for k, v in sd.items()}
        with init_empty_weights():
            net = SD3Transformer2DModel.from_config(config)
        net.load_state_dict(sd, assign=True)
        return net.eval().requires_grad_(False)

    manager = ModelManager("cpu", vram_budget=budget if mode == "offload" else None)
    entry = manager.load("m", loader, compute_dtype=torch.float32)
    sample()
    with manager.use(entry) as net:
        sample()
        for block in net.transformer_blocks:  # after the placement's hooks: sampled with the block materialised
            block.register_forward_pre_hook(sample)
            block.register_forward_hook(sample)
        with torch.inference_mode():
            out = net(**inputs, return_dict=False)[0]
        sample()
    torch.save(out, out_path)
    print(json.dumps({"rss_peak": peak[0], "tracked_peak": manager.memory.peak}))
""")


def _rss_run(mode: str, path, tmp_path) -> tuple[dict, torch.Tensor]:
    out_path = tmp_path / f"{mode}.pt"
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, mode, str(path), str(BUDGET), json.dumps(CONFIG),
                           str(out_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), torch.load(out_path)


def test_rss_peak_stays_under_budget_plus_one_block_and_full_load_exceeds_it(fp16_file, tmp_path):
    """Measured on the process: anonymous RSS (memory-mapped file pages are the page cache's)."""
    block = 21 * MIB
    full, out_full = _rss_run("full", fp16_file, tmp_path)
    streamed, out_streamed = _rss_run("offload", fp16_file, tmp_path)
    print(f"RSS peak delta: full load {full['rss_peak'] / MIB:.1f} MiB, streamed {streamed['rss_peak'] / MIB:.1f} "
          f"MiB (tracked {streamed['tracked_peak'] / MIB:.1f} MiB); budget {BUDGET / MIB:.0f} MiB")
    assert full["rss_peak"] > BUDGET + block
    assert streamed["rss_peak"] <= BUDGET + block
    assert streamed["tracked_peak"] <= BUDGET
    torch.testing.assert_close(out_streamed, out_full, rtol=0, atol=0)


def _meta(build):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build()


def test_plans_for_the_released_sizes_on_a_24_gb_gpu():
    """Flux.1-dev (12B), SD3.5 Large, T5-XXL and Qwen-Image (20B) at their released sizes (meta tensors: shapes only), in
    bf16 on a GPU: under a budget each plan's peak stays within it; --lowvram needs under 2 GiB."""
    from transformers import T5Config, T5EncoderModel

    gib = 1024**3
    flux = _meta(lambda: diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True))
    sd35 = _meta(lambda: diffusers.SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64, num_attention_heads=38,
        joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=192, qk_norm="rms_norm"))
    t5 = _meta(lambda: T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                               num_heads=64, feed_forward_proj="gated-gelu")))
    qwen = _meta(lambda: diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56)))
    placements = {name: Placement(net, torch.bfloat16)
                  for name, net in (("flux", flux), ("sd35", sd35), ("t5", t5), ("qwen_image", qwen))}
    assert placements["qwen_image"].full_cost("cuda") > 36 * gib  # 20B: streams on any 24 GB card
    assert placements["flux"].full_cost("cuda") > 22 * gib  # fp32 storage on meta, counted in bf16
    for name, placement in placements.items():
        for budget in (20 * gib, 12 * gib, 8 * gib):
            plan = placement.plan("cuda", budget)
            assert plan.prefetch or not plan.streams
            assert plan.peak_bound <= budget, (name, budget, plan)
            assert plan.streams == (placement.full_cost("cuda") > budget)
        assert placement.plan("cuda", None, stream_all=True).peak_bound < 2 * gib
    plan = placements["flux"].plan("cuda", 20 * gib)
    assert len(plan.kept) > 30 and plan.streamed  # most of Flux stays on a 24 GB card, the rest streams


def test_run_and_serve_take_the_memory_flags():
    from nodegraph.cli import build_parser, model_manager
    from nodegraph.server.app import build_engine
    from nodegraph.server.config import ServerConfig

    run = build_parser().parse_args(["run", "w.json", "--device", "cpu", "--lowvram", "--vram-budget-gb", "0.5"])
    manager = model_manager(run)
    assert manager.low_vram and manager.vram_budget == 512 * MIB and manager.streams
    serve = build_parser().parse_args(["serve", "--vram-budget-gb", "0"])
    assert serve.vram_budget_gb == 0 and not serve.lowvram
    engine = build_engine(ServerConfig(device="cpu", low_vram=True, vram_budget_bytes=3 * MIB))
    try:
        models = engine.services["models"]
        assert (models.low_vram, models.vram_budget) == (True, 3 * MIB)
    finally:
        engine.close()


def test_storage_dtype_is_the_files_unless_the_cpu_computes_without_a_budget():
    f16, f32 = torch.float16, torch.float32
    assert ModelManager("cpu").storage_dtype(f16, f32) == f32  # cast once: the copy computed with
    assert ModelManager("cpu", vram_budget=0).storage_dtype(f16, f32) == f16
    assert ModelManager("cpu", low_vram=True).storage_dtype(f16, f32) == f16
    assert ModelManager("cuda").storage_dtype(f16, torch.bfloat16) == f16  # cast on the GPU when placed
    assert ModelManager("cuda").storage_dtype(None, torch.bfloat16) == torch.bfloat16


def _stream_all_equals_whole(net, call):
    """``net`` (fp16 storage) streamed block by block in fp32 gives what the fp32 model gives."""
    ref_net = net.float()
    with torch.inference_mode():
        ref = call(ref_net)
    manager = ModelManager("cpu", low_vram=True)
    entry = manager.load("m", lambda: net.half().eval().requires_grad_(False), compute_dtype=torch.float32)
    with manager.use(entry) as placed, torch.inference_mode():
        out = call(placed)
        plan = entry.placement.attached
    assert plan.streams and not plan.kept
    assert manager.memory.peak <= plan.peak_bound < entry.placement.full_cost("cpu")
    assert manager.memory.current == 0
    return out, ref, plan


def test_a_unet_and_a_clip_text_encoder_stream_too():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    # fp16-exact weights, so the fp32 reference and the streamed fp16 storage hold the same values
    unet = unet.half().float()
    x, states = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 32)
    out, ref, plan = _stream_all_equals_whole(unet, lambda n: n(x, 10, encoder_hidden_states=states).sample)
    assert any(name.startswith("down_blocks.") for name in plan.streamed)
    assert any(name.startswith("mid_block.") for name in plan.streamed)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)

    clip = CLIPTextModel(CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, max_position_embeddings=16)).half().float()
    ids = torch.tensor([[0, 5, 7, 9, 98]])
    out, ref, plan = _stream_all_equals_whole(clip, lambda n: n(ids).last_hidden_state)
    assert [name.split("encoder.")[-1] for name in plan.streamed] == [f"layers.{i}" for i in range(3)]
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_nothing_streams_when_placing_costs_nothing():
    """fp32 storage computed in fp32 on the CPU: the weights are used where they are, even with --lowvram."""
    net = diffusers.SD3Transformer2DModel(**{**CONFIG, "num_layers": 2})
    manager = ModelManager("cpu", low_vram=True, vram_budget=0)
    entry = manager.load("m", lambda: net.eval().requires_grad_(False), compute_dtype=torch.float32)
    first = next(net.parameters()).data_ptr()
    with manager.use(entry) as placed:
        assert not entry.placement.attached.streams and next(placed.parameters()).data_ptr() == first
    assert manager.memory.peak == 0
