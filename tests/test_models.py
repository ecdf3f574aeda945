"""E, G and D (tkh.models): shapes, gradients, the paper's formulas, checkpoints, precision and memory formats."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from tkh.config import Config, ModelConfig, load_config
from tkh.errors import CheckpointError
from tkh.models import Discriminator, Embedder, Generator, TalkingHeadModel, describe, param_counts


def narrow(image_size: int, **kw) -> Config:
    """The networks at a given resolution with tiny widths, for fast tests."""
    model = dict(name=f"test-{image_size}", image_size=image_size, base_channels=8, max_channels=32, embed_dim=32,
                 bottleneck_size=min(16, image_size // 8), gen_res_blocks=2)
    model.update(kw)
    return Config(model=ModelConfig(**model))


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("image_size", [64, 128, 256])
def test_shapes_and_gradients(image_size):
    cfg = narrow(image_size)
    model = TalkingHeadModel(cfg, num_videos=5)
    b, k, s, n = 2, 3, image_size, cfg.model.embed_dim
    x, y = rand(b, k, 3, s, s, seed=1), rand(b, k, 3, s, s, seed=2)
    i = torch.tensor([4, 1])

    e = model.E(x, y)
    assert e.shape == (b, n) and (e >= 0).all()  # ReLU after global pooling
    fake = model.G(y[:, 0], e)
    assert fake.shape == (b, 3, s, s) and fake.abs().max() <= 1
    score, feats = model.D(fake, y[:, 0], i)
    assert score.shape == (b,)
    # One feature map per residual block: the trunk down to 4x4 plus D's extra block at 4x4.
    assert len(feats) == int(math.log2(s // 4)) + 1
    assert feats[-1].shape[-2:] == (4, 4) and feats[-2].shape[-2:] == (4, 4)
    assert model.G.adain_params(e).shape == (b, model.G.n_adain)

    (score.sum() + fake.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), name
    # Every network really learns from this loss (attention's γ starts at 0, so test one conv per net).
    for net in (model.E, model.G, model.D):
        assert any(p.grad.abs().sum() > 0 for p in net.parameters())
    assert model.D.W.grad[[0, 2, 3]].abs().sum() == 0 and model.D.W.grad[[1, 4]].abs().sum() > 0


def test_embedder_averages_over_k():
    cfg = narrow(64)
    emb = Embedder(cfg.model).eval()  # eval: no power-iteration step of spectral norm between calls
    x, y = rand(2, 4, 3, 64, 64, seed=3), rand(2, 4, 3, 64, 64, seed=4)
    e = emb(x, y)
    per_frame = torch.stack([emb.embed_frames(x[:, j], y[:, j]) for j in range(4)], dim=1)  # (B, K, N)
    torch.testing.assert_close(e, per_frame.mean(dim=1), rtol=1e-5, atol=1e-6)


def test_adain_is_driven_by_the_embedding():
    cfg = narrow(64)
    gen = Generator(cfg.model).eval()
    y = rand(2, 3, 64, 64, seed=5)
    e1, e2 = rand(2, 32, seed=6).abs() * 3, rand(2, 32, seed=7).abs() * 3
    out1, out2 = gen(y, e1), gen(y, e2)
    assert (out1 - out2).abs().mean() > 1e-3  # another person's embedding, another image
    torch.testing.assert_close(gen.render(y, gen.adain_params(e1)), out1)  # G(y, ê) = render(y, P·ê)
    # ψ of shape (n_adain,) is shared by the batch (fine-tuning's free ψ').
    psi = gen.adain_params(e1[:1])[0]
    torch.testing.assert_close(gen.render(y, psi), gen.render(y, psi.expand(2, -1)))

    # Every AdaIN layer's slice of ψ reaches the output.
    psi = gen.adain_params(e1).detach().requires_grad_()
    gen.render(y, psi).square().sum().backward()
    for j, part in enumerate(psi.grad.split(gen.psi_sizes, dim=1)):
        assert part.abs().sum() > 0, f"AdaIN layer {j} is not used"


def test_discriminator_score_is_the_projection_formula():
    cfg = narrow(64)
    disc = Discriminator(cfg.model, num_videos=3)
    with torch.no_grad():  # make W, w0, b non-trivial
        disc.W.normal_()
        disc.w0.normal_()
        disc.b.fill_(0.7)
    disc.eval()
    x, y = rand(2, 3, 64, 64, seed=8), rand(2, 3, 64, 64, seed=9)
    i = torch.tensor([2, 0])
    score, feats = disc(x, y, i)
    v, _ = disc.features(x, y)  # V(x, y; θ): (B, N)
    by_hand = torch.stack([v[j] @ (disc.W[i[j]] + disc.w0) + disc.b for j in range(2)])
    torch.testing.assert_close(score, by_hand)
    # Fine-tuning: w' = w0 + ê replaces W_i + w0 (sec. 3.3); a single (N,) vector is shared.
    w = disc.w0 + rand(32, seed=10).abs()
    s2, _ = disc.score_with_w(x, y, w)
    torch.testing.assert_close(s2, v @ w + disc.b)


def test_spectral_norm_on_every_conv_and_self_attention_where_the_paper_puts_it():
    """Sec. 3.4: every convolution (and E's/D's linear maps) is spectrally normalised: σ_max(W) ≈ 1 after
    power iterations; P is the one linear map left plain. Self-attention sits at S/8 in E and D (32x32 at
    256 px), after G's encoder block at S/8 and after G's decoder block at S/4 (64x64)."""
    from torch.nn.utils import parametrize

    from tkh.models.blocks import SelfAttention

    cfg = narrow(128, embed_dim=48)  # embed_dim ≠ the trunk's width: E and D get their linear map to N
    model = TalkingHeadModel(cfg, 3).train()
    x, y = rand(1, 1, 3, 128, 128, seed=23), rand(1, 1, 3, 128, 128, seed=24)
    with torch.no_grad():
        for _ in range(12):  # each training-mode call runs one more power iteration per layer
            model.D(model.G(y[:, 0], model.E(x, y)), y[:, 0], torch.tensor([0]))
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) > 40
    plain = [n for n, m in layers if not parametrize.is_parametrized(m, "weight")]
    assert plain == ["G.P"], plain
    for name, m in layers:
        if name == "G.P":
            continue
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.05), (name, sigma)
    assert not any(parametrize.is_parametrized(m) for m in TalkingHeadModel(narrow(64, spectral_norm=False), 1).modules())

    def attention_at(net, run) -> list[int]:
        sizes = []
        hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
                 for m in net.modules() if isinstance(m, SelfAttention)]
        with torch.no_grad():
            run()
        for h in hooks:
            h.remove()
        return sizes

    model.eval()
    assert attention_at(model.E, lambda: model.E(x, y)) == [128 // 8]
    assert attention_at(model.D, lambda: model.D(x[:, 0], y[:, 0], torch.tensor([0]))) == [128 // 8]
    assert attention_at(model.G, lambda: model.G(y[:, 0], model.E(x, y))) == [128 // 8, 128 // 4]
    with torch.device("meta"):  # the paper's G without building 38M real weights
        paper = Generator(ModelConfig(**{**vars(load_config("paper-256").model), "spectral_norm": False}))
    assert (paper.attn_down_after, paper.attn_up_after) == (2, 1)  # after the 32x32 and the 64x64 blocks
    assert [b.conv1.out_channels for b in paper.res] == [512] * 5  # 5 residual blocks at 512 x 16 x 16


def test_save_load_round_trip(tmp_path):
    cfg = narrow(64)
    model = TalkingHeadModel(cfg, num_videos=4)
    x, y = rand(1, 2, 3, 64, 64, seed=11), rand(1, 2, 3, 64, 64, seed=12)
    i = torch.tensor([3])
    model.train()
    model.E(x, y)  # a training-mode pass updates spectral norm's u, v: they must be saved too
    model.D(x[:, 0], y[:, 0], i)
    model.eval()
    path = model.save(tmp_path / "m.safetensors", meta={"step": 7})
    again = TalkingHeadModel.load(path, strict_config=cfg).eval()
    assert again.meta == {"step": 7} and again.num_videos == 4 and again.cfg == cfg
    with torch.no_grad():
        e = model.E(x, y)
        assert torch.equal(e, again.E(x, y))
        assert torch.equal(model.G(y[:, 0], e), again.G(y[:, 0], e))
        assert torch.equal(model.D(x[:, 0], y[:, 0], i)[0], again.D(x[:, 0], y[:, 0], i)[0])

    # fp16 without W: the shipped form; loads back as float32 with 0 videos.
    small = model.save(tmp_path / "half.safetensors", dtype=torch.float16, keep_video_embeddings=False)
    assert small.stat().st_size < path.stat().st_size * 0.6
    half = TalkingHeadModel.load(small)
    assert half.num_videos == 0 and all(p.dtype == torch.float32 for p in half.parameters())
    with torch.no_grad():
        assert (half.eval().E(x, y) - e).abs().max() < 1e-2 * e.abs().max()


def test_load_with_another_config_names_the_field(tmp_path):
    path = TalkingHeadModel(narrow(64), 2).save(tmp_path / "a.safetensors")
    other = narrow(64, embed_dim=16)
    with pytest.raises(CheckpointError) as info:
        TalkingHeadModel.load(path, strict_config=other)
    msg = str(info.value)
    assert "model.embed_dim" in msg and "a.safetensors" in msg and "\n" not in msg
    assert "model.image_size" not in msg


def test_truncated_or_corrupt_checkpoint(tmp_path):
    path = TalkingHeadModel(narrow(64), 2).save(tmp_path / "ok.safetensors")
    data = path.read_bytes()
    for name, content in [("half.safetensors", data[: len(data) // 2]), ("head.safetensors", data[:5]),
                          ("junk.safetensors", b"\x00" * 100)]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name):
            TalkingHeadModel.load(tmp_path / name)
    with pytest.raises(CheckpointError, match="not found"):
        TalkingHeadModel.load(tmp_path / "missing.safetensors")
    # A valid safetensors file that is not a tkh checkpoint.
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a tkh checkpoint"):
        TalkingHeadModel.load(tmp_path / "other.safetensors")


def test_paper_parameter_counts():
    """paper-256 against the paper (E ≈ 15M, G ≈ 38M, D ≈ 20M) and a re-implementation (14.9/38.2/19.6M)."""
    counts = param_counts(load_config("paper-256"))
    assert abs(counts["E"] - 14.9e6) < 0.1e6
    assert abs(counts["D"] - 19.6e6) < 0.1e6
    assert abs(counts["G"] - 38.2e6) < 0.5e6
    assert param_counts(load_config("paper-256"), num_videos=10)["D.W"] == 10 * 512
    assert "paper" in describe(load_config("paper-256"))


def test_small_config_fits_the_shipping_budget():
    counts = param_counts(load_config("small"))
    assert counts["total"] * 2 <= 24 * 2**20  # E + G + D in fp16, W dropped


def test_bf16_autocast_on_cpu():
    cfg = narrow(64)
    model = TalkingHeadModel(cfg, 2)
    x, y = rand(2, 2, 3, 64, 64, seed=13), rand(2, 2, 3, 64, 64, seed=14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e = model.E(x, y)
        fake = model.G(y[:, 0], e)
        score, _ = model.D(fake, y[:, 0], torch.tensor([0, 1]))
    assert score.dtype == torch.float32  # the score is kept in float32 for the hinge loss
    assert torch.isfinite(fake).all() and torch.isfinite(score).all()
    score.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_channels_last_matches_contiguous():
    cfg = narrow(64)
    model = TalkingHeadModel(cfg, 2).eval()
    x, y = rand(2, 3, 64, 64, seed=15), rand(2, 3, 64, 64, seed=16)
    with torch.no_grad():
        e = model.E.embed_frames(x, y)
        ref = model.G(y, e), model.D(x, y, torch.tensor([0, 1]))[0]
        model = model.to(memory_format=torch.channels_last)
        xc, yc = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
        e2 = model.E.embed_frames(xc, yc)
        out = model.G(yc, e2), model.D(xc, yc, torch.tensor([0, 1]))[0]
    torch.testing.assert_close(e2, e, rtol=1e-4, atol=1e-4)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_full_graph_cpu():
    """Each network traces into one graph (no graph breaks): what torch.compile needs on CUDA too."""
    cfg = narrow(64)
    model = TalkingHeadModel(cfg, 2)
    eager = copy.deepcopy(model)  # same weights and spectral-norm vectors: one training-mode step each
    x, y = rand(2, 2, 3, 64, 64, seed=17), rand(2, 2, 3, 64, 64, seed=18)
    i = torch.tensor([0, 1])
    e = torch.compile(model.E, fullgraph=True, backend="aot_eager")(x, y)
    fake = torch.compile(model.G, fullgraph=True, backend="aot_eager")(y[:, 0], e)
    score, _ = torch.compile(model.D, fullgraph=True, backend="aot_eager")(fake, y[:, 0], i)
    score.sum().backward()
    ref, _ = eager.D(eager.G(y[:, 0], eager.E(x, y)), y[:, 0], i)
    torch.testing.assert_close(score, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_channels_last_bf16_compile():
    """The training configuration on a GPU: channels_last, bf16 autocast, torch.compile (inductor)."""
    cfg = load_config("tiny")
    model = TalkingHeadModel(cfg, 4).cuda().to(memory_format=torch.channels_last)
    s = cfg.model.image_size
    x = rand(2, 2, 3, s, s, seed=19).cuda()
    y = rand(2, 2, 3, s, s, seed=20).cuda()
    e_c, g_c, d_c = (torch.compile(m) for m in (model.E, model.G, model.D))
    for _ in range(2):  # the second call reuses the compiled graphs
        with torch.autocast("cuda", dtype=torch.bfloat16):
            e = e_c(x, y)
            fake = g_c(y[:, 0].contiguous(memory_format=torch.channels_last), e)
            score, feats = d_c(fake, y[:, 0].contiguous(memory_format=torch.channels_last), torch.tensor([0, 3]).cuda())
        assert torch.isfinite(fake.float()).all() and torch.isfinite(score).all()
        score.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_describe_table():
    text = describe(load_config("tiny"))
    assert "E (embedder)" in text and "G (generator, with P)" in text and "D (without W)" in text


def test_one_tiny_step_reaches_every_network():
    """E+G+D forward/backward for batch 2, K = 2 with the tiny config: every network gets a finite gradient
    (the step's speed is measured in benchmarks/train_throughput.py, never asserted here)."""
    cfg = load_config("tiny")
    model = TalkingHeadModel(cfg, 4)
    s = cfg.model.image_size
    x, y = rand(2, 2, 3, s, s, seed=21), rand(2, 2, 3, s, s, seed=22)
    e = model.E(x, y)
    fake = model.G(y[:, 0], e)
    score, _ = model.D(fake, y[:, 0], torch.tensor([0, 1]))
    real, _ = model.D(x[:, 0], y[:, 0], torch.tensor([0, 1]))
    (score.sum() - real.sum()).backward()
    for name in ("E", "G", "D"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def _face_episode(image: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A real face crop x and its landmark image y as (1, 3, size, size) tensors in [-1, 1]."""
    try:
        from tkh.landmarks import crop, detect, rasterize

        lms = detect(image, backend="dlib")
        face, face_lms, _ = crop(image, lms, size)
        y_img = rasterize(face_lms, size)
    except ImportError:  # tkh.landmarks absent: a fixed box around Grace Hopper's face, no landmarks
        import cv2

        face = cv2.resize(image[60:380, 100:420], (size, size), interpolation=cv2.INTER_AREA)
        y_img = np.zeros_like(face)

    def to_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1

    return to_tensor(face), to_tensor(y_img)


def test_overfit_one_real_face(grace_hopper):
    """A few dozen Adam steps of E + G on one real face with L1 reduce the loss clearly (0.70 -> ~0.16)."""
    cfg = narrow(64, base_channels=16, max_channels=64, embed_dim=64, bottleneck_size=8)
    x, y = _face_episode(grace_hopper, 64)
    model = TalkingHeadModel(cfg, 1)
    opt = torch.optim.Adam([*model.E.parameters(), *model.G.parameters()], lr=2e-3, betas=(0.5, 0.999))
    losses = []
    for _ in range(30):
        fake = model.G(y, model.E(x[:, None], y[:, None]))
        loss = (fake - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0], losses


def test_parameter_table_command(capsys):
    """`python -m tkh.models` prints every shipped config's counts per network beside the paper's."""
    from tkh.models.__main__ import main

    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("tiny: 64px", "small: 128px", "paper-256: 256px"):
        assert name in out
    paper = out[out.index("paper-256:"):]
    assert "E (embedder)" in paper and "14.91M" in paper and "37.95M" in paper and "19.63M" in paper
    assert main(["no-such-config"]) == 2 and "no-such-config" in capsys.readouterr().err
