"""Meta-learning (tkh.train) on real frames: a short run learns, resume == uninterrupted, NaN guard,
one-line errors for unusable checkpoints and missing perceptual weights. CPU, tiny config.

The equivalence tests use `loss.perceptual: none` (pixel L1 stands in for L_CNT; allowed explicitly)
because they check bookkeeping, not the loss, and the face network at 150 px dominates CPU time; the
learning test uses the real perceptual loss (the ported dlib face network).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from tkh.cli import main as cli_main
from tkh.config import load_config
from tkh.data import EpisodeDataset
from tkh.errors import CheckpointError, NonFiniteLossError
from tkh.models import TalkingHeadModel
from tkh.train import Callbacks, latest_checkpoint, plot_losses, read_log, train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny(perceptual: str = "none", **train_overrides):
    cfg = load_config("tiny")
    loss = {"perceptual": perceptual, "allow_no_perceptual": perceptual == "none"}
    base = {"progress": False, "tensorboard": False, "sample_every": 0, "ckpt_every": 0, "log_every": 1,
            "device": "cpu", "num_workers": 0}
    return cfg.replace(train={**base, **train_overrides}, loss=loss)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_short_run_learns_and_writes_everything(tiny_cache, tmp_path):
    """Real perceptual loss, one fixed batch: all losses finite and the reconstruction error drops."""
    cfg = tiny("auto", steps=14, lr_eg=5e-4, fixed_episodes=True, sample_every=7, ckpt_every=7)
    seen, grids = [], []
    res = train(cfg, tiny_cache, tmp_path / "run",
                callbacks=Callbacks(on_step=seen.append, on_sample=lambda s, g: grids.append((s, g.shape))))
    assert res.step == 14 and res.stopped == "steps" and len(seen) == 14
    rows = read_log(res.log)
    assert [int(r["step"]) for r in rows] == list(range(1, 15))
    for key in ("G_total", "G_cnt", "G_cnt_dlib", "G_adv", "G_fm", "G_mch", "G_rec_l1", "D_total", "it_s"):
        assert all(math.isfinite(float(r[key])) for r in rows), key
    rec = [float(r["G_rec_l1"]) for r in rows]
    first, last = sum(rec[:3]) / 3, sum(rec[-3:]) / 3
    assert last < 0.9 * first, f"reconstruction L1 did not go down: {rec}"
    # artefacts: samples (synthetic label), checkpoint, loss plot, resolved config, train/holdout ids
    from tkh.media import read_label

    samples = sorted((res.run_dir / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["step_000001.png", "step_000007.png", "step_000014.png"]
    assert "tkh" in (read_label(samples[0]) or "")
    assert grids[0][1][1] == 4 * 64  # frame | landmarks | target | generated
    assert (res.run_dir / "losses.png").is_file() and (res.run_dir / "config.json").is_file()
    assert latest_checkpoint(res.run_dir / "checkpoints")[0] == res.checkpoint
    loaded = TalkingHeadModel.load(res.checkpoint)
    assert loaded.meta["step"] == 14 and loaded.num_videos == res.model.num_videos
    assert len(plot_losses(res.run_dir).axes) == 3


def test_resume_equals_uninterrupted_run(tiny_cache, tmp_path):
    cfg = tiny(steps=4)
    full = train(cfg, tiny_cache, tmp_path / "full")
    half = train(cfg.replace(train={"steps": 2}), tiny_cache, tmp_path / "half")
    assert half.step == 2
    resumed = train(cfg, tiny_cache, tmp_path / "half", resume=True)
    assert resumed.step == 4 and resumed.steps_run == 2
    a, b = weights(full.model), weights(resumed.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    rows_a, rows_b = read_log(full.log), read_log(resumed.log)
    assert [r["step"] for r in rows_b] == ["1", "2", "3", "4"]
    for ra, rb in zip(rows_a[2:], rows_b[2:]):  # the steps after the resume: same losses
        for key in ("G_total", "D_total", "G_rec_l1"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-6)


def test_cli_resume_says_what_it_resumed_and_when_the_run_is_complete(tiny_cache, tmp_path, capsys):
    """`tkh train --resume`: the first line names the step and checkpoint it continues from; resuming a finished
    run says so (and where its checkpoint is) instead of a silent "after 0 steps"."""
    yaml_path = tmp_path / "tiny.yaml"
    tiny(steps=1).to_yaml(yaml_path)
    run = tmp_path / "run"
    args = ["train", "--config", str(yaml_path), "--data", str(tiny_cache), "--out", str(run)]
    assert cli_main(args) == 0
    first, _ = latest_checkpoint(run / "checkpoints")
    capsys.readouterr()
    assert cli_main([*args, "--steps", "2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"; resuming from step 1, checkpoint {first}" in out.splitlines()[0]
    assert "tkh train: stopped (steps) at step 2 after 1 steps" in out
    last, _ = latest_checkpoint(run / "checkpoints")
    assert last != first
    assert cli_main([*args, "--steps", "2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert (f"; the run is already complete (step 2 of train.steps=2, checkpoint {last}); nothing to do: pass a "
            "larger --steps to continue it") in out.splitlines()[0]
    assert out.splitlines()[-1] == (f"tkh train: nothing to do, the run is already complete at step 2 (train.steps "
                                    f"2); checkpoint {last}; pass a larger --steps to continue it")
    assert "after 0 steps" not in out and latest_checkpoint(run / "checkpoints")[0] == last


def test_nonfinite_losses_skip_then_stop_and_keep_last_good_checkpoint(tiny_cache, tmp_path):
    """Two good steps, then resume with a learning rate of 1e30: the first update blows the weights up and
    the losses become NaN/inf (a real failure, nothing mocked)."""
    cfg = tiny(steps=2, ckpt_every=1)
    train(cfg, tiny_cache, tmp_path / "run")
    bad_cfg = cfg.replace(train={"steps": 20, "lr_eg": 1e30, "lr_d": 1e30, "max_nonfinite": 3})
    with pytest.warns(RuntimeWarning, match="non-finite"), pytest.raises(NonFiniteLossError) as err:
        train(bad_cfg, tiny_cache, tmp_path / "run", resume=True)
    assert "\n" not in str(err.value) and "consecutive" in str(err.value)
    rows = read_log(tmp_path / "run" / "log.csv")
    bad = [int(r["step"]) for r in rows if int(r["nonfinite"])]
    assert len(bad) == 3 and bad == list(range(bad[0], bad[0] + 3)) and bad[0] >= 3
    weights_path, _ = latest_checkpoint(tmp_path / "run" / "checkpoints")
    kept = TalkingHeadModel.load(weights_path)
    assert kept.meta["step"] == bad[0] - 1  # the last good step's checkpoint (ckpt_every=1), none of a skipped one
    assert all(torch.isfinite(t).all() for t in kept.state_dict().values())
    # and training goes on from it once the cause is fixed
    res = train(cfg.replace(train={"steps": bad[0] + 1}), tiny_cache, tmp_path / "run", resume=True)
    assert res.step == bad[0] + 1 and all(math.isfinite(v) for v in res.losses.values())


def test_checkpoint_of_another_config_or_truncated_is_one_line(tiny_cache, tmp_path, capsys):
    cfg = tiny(steps=1)
    train(cfg, tiny_cache, tmp_path / "run")
    other = cfg.replace(model={"base_channels": 16})
    with pytest.raises(CheckpointError, match="another model config") as err:
        train(other.replace(train={"steps": 2}), tiny_cache, tmp_path / "run", resume=True)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="held out|videos"):
        train(cfg.replace(train={"steps": 2, "holdout": ["carphone*"]}), tiny_cache, tmp_path / "run", resume=True)

    weights_path, state_path = latest_checkpoint(tmp_path / "run" / "checkpoints")
    state_path.write_bytes(state_path.read_bytes()[: os.path.getsize(state_path) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(cfg.replace(train={"steps": 2}), tiny_cache, tmp_path / "run", resume=True)
    weights_path.write_bytes(weights_path.read_bytes()[:1000])
    yaml_path = tmp_path / "tiny.yaml"
    cfg.to_yaml(yaml_path)
    rc = cli_main(["train", "--config", str(yaml_path), "--data", str(tiny_cache), "--out", str(tmp_path / "run"),
                   "--steps", "2", "--resume"])
    err_lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("tkh train")]
    assert rc == 2 and len(err_lines) == 1 and "truncated or corrupt" in err_lines[0]


def test_cli_refuses_without_perceptual_weights_and_fresh_run_over_old_one(tiny_cache, tmp_path, capsys):
    cfg = tiny(steps=1).replace(loss={"perceptual": "vgg19", "allow_no_perceptual": False,
                                      "vgg19_path": str(tmp_path / "missing-vgg19.pth")})
    yaml_path = tmp_path / "vgg.yaml"
    cfg.to_yaml(yaml_path)
    args = ["train", "--config", str(yaml_path), "--data", str(tiny_cache), "--out", str(tmp_path / "run")]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tkh train: error:") and "allow_no_perceptual" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()

    ok_yaml = tmp_path / "ok.yaml"
    tiny(steps=1).to_yaml(ok_yaml)
    assert cli_main(["train", "--config", str(ok_yaml), "--data", str(tiny_cache), "--out", str(tmp_path / "run2"),
                     "--holdout", "carphone*"]) == 0
    assert "stopped (steps) at step 1" in capsys.readouterr().out
    import json

    videos = json.loads((tmp_path / "run2" / "videos.json").read_text())
    assert videos["holdout"] and all(v.startswith("carphone") for v in videos["holdout"])
    assert not set(videos["holdout"]) & set(videos["train"])
    assert cli_main(["train", "--config", str(ok_yaml), "--data", str(tiny_cache), "--out", str(tmp_path / "run2")]) == 2
    assert "--resume" in capsys.readouterr().err


def test_grad_checkpointing_gives_the_same_gradients_and_bf16_runs(tiny_cache):
    """One G_main phase on a real episode: recomputing the residual blocks in backward changes no gradient;
    bf16 autocast (what CUDA uses; CPU supports it too) gives finite losses close to float32."""
    from torch.utils.data import default_collate

    from tkh.data import EpisodeDataset
    from tkh.models.blocks import spectral_norm_cached
    from tkh.train.objectives import MetaStep
    from tkh.train.setup import enable_grad_checkpointing

    cfg = tiny()
    ds = EpisodeDataset(tiny_cache, k=1, image_size=64)
    batch = default_collate([ds[(0, 0)]])
    torch.manual_seed(0)
    model = TalkingHeadModel(cfg, num_videos=len(ds)).eval()  # eval: spectral norm's u, v stay put

    def grads(step: MetaStep, autocast: bool = False) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _, _ = step("G_main", batch)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    step = MetaStep(model, None, cfg.loss)
    loss_ref, ref = grads(step)
    loss_bf16, _ = grads(step, autocast=True)
    assert math.isfinite(loss_bf16) and loss_bf16 == pytest.approx(loss_ref, rel=0.05)
    assert enable_grad_checkpointing(model) > 10
    with spectral_norm_cached(model):
        loss_ckpt, got = grads(step)
    assert loss_ckpt == pytest.approx(loss_ref, rel=1e-6)
    assert ref.keys() == got.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_train_under_cpu_bf16_autocast_with_the_real_perceptual_loss(tiny_cache, tmp_path):
    """`train.amp=bf16` on a CPU: every op of a step (the dlib network's resize included) runs under bf16
    autocast, the losses are float32 and finite and the first step is within 5 % of the float32 run's."""
    runs = {amp: train(tiny("auto", steps=2, amp=amp, fixed_episodes=True), tiny_cache, tmp_path / amp)
            for amp in ("off", "bf16")}
    a, b = (read_log(tmp_path / amp / "log.csv") for amp in ("off", "bf16"))
    assert runs["bf16"].step == 2 and int(b[0]["nonfinite"]) == int(b[1]["nonfinite"]) == 0
    for key in ("G_total", "G_cnt_dlib", "D_total"):
        assert float(b[0][key]) == pytest.approx(float(a[0][key]), rel=0.05), key


def test_train_with_grad_checkpointing_runs_and_matches_the_plain_run(tiny_cache, tmp_path):
    """`train.grad_checkpoint=true` through the real loop (spectral-norm weights computed before the
    checkpointed blocks): finite losses close to the plain run's. Not equal: with checkpointing σ(W)'s power
    iteration runs once per phase instead of once per use of the weight (D is used on real and fake), so
    the spectral norms differ by a fraction of a percent."""
    plain = train(tiny(steps=2), tiny_cache, tmp_path / "plain")
    ckpt = train(tiny(steps=2, grad_checkpoint=True), tiny_cache, tmp_path / "ckpt")
    a, b = read_log(tmp_path / "plain" / "log.csv"), read_log(tmp_path / "ckpt" / "log.csv")
    assert plain.step == ckpt.step == 2 and len(a) == len(b) == 2
    for key in ("G_total", "D_total"):
        assert float(b[0][key]) == pytest.approx(float(a[0][key]), rel=1e-2), key
        assert math.isfinite(float(b[1][key]))


def test_sigterm_finishes_the_step_and_checkpoints(tiny_cache, tmp_path):
    """SIGTERM (a cluster's time limit, `kill`) mid-run: the step finishes, a checkpoint is written, no error."""
    import signal

    def on_step(info):
        if info.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    res = train(tiny(steps=50), tiny_cache, tmp_path / "run", callbacks=Callbacks(on_step=on_step))
    assert (res.stopped, res.step) == ("signal", 1)
    assert TalkingHeadModel.load(res.checkpoint).meta["step"] == 1
    assert not hasattr(signal.getsignal(signal.SIGTERM), "__self__")  # train's handler is gone again


def test_warm_start_copies_e_g_d_but_not_w_and_refuses_another_size(tiny_cache, tmp_path, capsys):
    """train.init: E, G and D's θ/w0/b come from the given weights, W starts afresh (its rows were other
    videos': from the copied embedder, or random); resuming ignores init; weights of another model size are
    one line."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tkh import pretrained

    from adapt_helpers import make_tiny_pretrained

    src_dir = make_tiny_pretrained(tmp_path / "pretrained", seed=3)
    source = weights(pretrained.load(str(src_dir)))
    result = train(tiny(steps=0, init=str(src_dir)), tiny_cache, tmp_path / "run")
    got = weights(result.model)
    for k, v in source.items():
        if k != "D.W":
            assert torch.equal(got[k].float(), v.float()), k
    assert got["D.W"].shape[0] == 4 and not torch.equal(got["D.W"][:4], source["D.W"][:4])

    # init_w: "embedder" (default) starts each row at the copied E's mean embedding of that person, so L_MCH
    # on unseen episodes (epoch 7: not among those the rows were made from) is far below random rows'.
    rand_cfg = tiny(steps=0, init=str(src_dir), init_w="random")
    rand = train(rand_cfg, tiny_cache, tmp_path / "run_rand").model
    tc = rand_cfg.train
    data = EpisodeDataset(tiny_cache, k=tc.k_shots, image_size=rand_cfg.model.image_size, seed=tc.seed,
                          holdout=tc.holdout, w_rows=tc.w_rows)

    def mch(model):
        with torch.no_grad():
            eps = [data[(i, 7)] for i in range(len(data))]
            e_hat = model.E(torch.stack([e["frames"] for e in eps]), torch.stack([e["landmarks"] for e in eps]))
            return (model.D.W[[e["video_index"] for e in eps]] - e_hat).abs().mean().item()

    assert (got["D.W"] >= 0).all() and not torch.equal(got["D.W"][0], got["D.W"][1])  # ReLU'd, one per person
    assert mch(result.model) < 0.5 * mch(rand), (mch(result.model), mch(rand))
    assert "rows from the embedder" in capsys.readouterr().out  # the run's first line says how W started

    again = train(tiny(steps=1, init=str(src_dir)), tiny_cache, tmp_path / "run", resume=True)
    assert again.step == 1
    bigger = tiny(steps=0, init=str(src_dir)).replace(model={"embed_dim": 96})
    with pytest.raises(CheckpointError, match="do not fit this config"):
        train(bigger, tiny_cache, tmp_path / "run2")
