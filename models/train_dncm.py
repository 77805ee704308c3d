"""``chromabeam train dncm PAIRS WEIGHTS_OUT``: Neural Preset's self-supervised training.

Every step takes B pairs (I_i, I_j) — two colour looks of one crop — and minimises

    Z_i = nDNCM(I_i, d_i), Z_j = nDNCM(I_j, d_j)
    Y_i = sDNCM(Z_j, r_i), Y_j = sDNCM(Z_i, r_j)
    L = |Y_i − I_i|₁ + |Y_j − I_j|₁ + λ·‖Z_i − Z_j‖²    (λ = 10; means over pixels)

PAIRS is either a ``synth-pairs --mode preset`` OUTPUT (any URL; read with
``models.pairs.load_pairs``, random aligned crops) or ``photos:CACHE``: views generated on
the fly with ``transforms.ops.synth.make_pair`` (preset mode) from the TRAIN photos of
``models.photos`` (Debian packages unpacked in CACHE, scikit-image's bundled photos), so
every step sees fresh looks. EVAL photos are never read.

Checkpoints (``--checkpoint-dir``, default ``WEIGHTS_OUT/checkpoint``) hold the model and
the Adam moments as safetensors plus ``state.json`` (step, loss log, settings); a rerun
with the same folder resumes at the saved step. The final weights go through
``models.registry.save_weights`` with a card listing every training photo and its source.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from chromabeam.models import photos as photo_catalog
from chromabeam.models.dncm import DNCM
from chromabeam.transforms import storage
from chromabeam.transforms.devices import resolve_device

__all__ = ["TrainConfig", "train", "build_training_model", "learning_rate", "load_checkpoint_model", "add_train_arguments", "train_command", "dncm_loss", "PhotoViews", "PairViews"]

log = logging.getLogger(__name__)
PHOTOS_PREFIX = "photos:"


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 6
    crop: int = 256
    lr: float = 3e-4
    lambda_con: float = 10.0
    freeze_blocks: int = 13
    loss_stride: int = 4
    cross_content: bool = True
    k: int = 16
    encoder_size: int = 256
    knots: int = 8
    hist_bins: int = 16
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    max_side: int = 512
    time_limit_s: float | None = None
    pretrained: bool = True
    encoder: str = "efficientnet"
    stats_hidden: int = 512
    stats_layers: int = 2
    dropout: float = 0.0
    cross_weight: float = 1.0
    lr_schedule: str = "constant"
    # photos: PAIRS only — the synthetic looks (transforms.ops.synth.SynthConfig, preset mode)
    view_perturb: str = "light"
    view_identity_prob: float = 0.0
    view_grade_prob: float = 0.5
    view_vignette_prob: float = 0.1
    view_mosaic_prob: float = 0.0
    extra: dict = field(default_factory=dict)


def dncm_loss(model: DNCM, I_i: torch.Tensor, I_j: torch.Tensor, lambda_con: float = 10.0,
              loss_stride: int = 1, S: torch.Tensor | None = None,
              cross_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The self-supervised loss for two views ``(B, 3, H, W)`` of the same crops.
    The encoder sees the whole views; the colour maps and the loss use every
    ``loss_stride``-th pixel (the maps are per pixel, so a strided sample of exact pixels is
    an unbiased estimate at a fraction of the cost). Returns ``(loss, parts)`` with
    ``parts`` the float values of loss, rec, con and Z's standard deviation.

    ``S`` (optional, same shape): I_i's look applied to *other* photos. Then the paper's
    eq. (1) — available here because the looks are synthetic — is added:
    ``|sDNCM(Z_j, r_S) − I_i|₁``, which asks r to carry the look and not the reference's
    content colours (without it, cross-content transfer drifts towards Reinhard-like
    colour matching; docs/stylize.md), weighted by ``cross_weight``."""
    views = [I_i, I_j] if S is None else [I_i, I_j, S]
    d, r = model.encode(torch.cat(views))  # one encoder pass for all views
    b = I_i.shape[0]
    I_i, I_j = I_i[..., ::loss_stride, ::loss_stride], I_j[..., ::loss_stride, ::loss_stride]
    Z_i, Z_j = model.normalize(I_i, d[:b]), model.normalize(I_j, d[b:2 * b])
    Y_i, Y_j = model.stylize(Z_j, r[:b]), model.stylize(Z_i, r[b:2 * b])
    rec = F.l1_loss(Y_i, I_i) + F.l1_loss(Y_j, I_j)
    con = F.mse_loss(Z_i, Z_j)
    loss = rec + lambda_con * con
    cross = None
    if S is not None:
        cross = F.l1_loss(model.stylize(Z_j, r[2 * b:]), I_i)
        loss = loss + cross_weight * cross
    with torch.no_grad():
        parts = {"loss": float(loss), "rec": float(rec), "con": float(con), "z_std": float(torch.cat([Z_i, Z_j]).std())}
        if cross is not None:
            parts["cross"] = float(cross)
    return loss, parts


# --------------------------------------------------------------------------- data

def _to_tensor(arrs: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255)


class PairViews:
    """Random aligned crops of a ``synth-pairs --mode preset`` OUTPUT."""

    def __init__(self, url: str, *, max_side: int = 512):
        from chromabeam.models.pairs import load_pairs

        self.pairs = load_pairs(url, max_side=max_side)
        if not self.pairs:
            raise ValueError(f"{storage.redact(url)} holds no ok pairs")
        self.url = url

    def sample(self, batch: int, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from chromabeam.models.pairs import random_crops

        return random_crops(self.pairs, batch, size, rng)

    def sources(self) -> list[str]:
        keys = sorted({p.key for p in self.pairs})
        return [f"synth-pairs {storage.redact(self.url)}: {k}" for k in keys]


class PhotoViews:
    """Two looks of a random crop of a TRAIN photo, made on the fly in preset mode
    (filters, procedural grades, perturbations ``perturb``; ``identity_prob``: chance that
    a look is the unchanged photo; every draw seeded). The looks are rendered on the
    8-bit crops (``transforms.ops.synth.render``: Pillow's C LUT for pure colour maps).
    ``mosaic_prob``: chance that a crop is a 2×2 mosaic of half-size crops of random
    photos — new colour statistics every time, so a model that reads statistics cannot
    memorise the few training photos' true colours (the looks are global colour maps, so
    a mosaic is as valid a content as a photo)."""

    def __init__(self, cache: str, *, max_side: int = 512, seed: int = 0, limit: int | None = None,
                 cross_content: bool = True, perturb: str = "light", identity_prob: float = 0.0,
                 grade_prob: float = 0.5, vignette_prob: float = 0.1, mosaic_prob: float = 0.0):
        from chromabeam.transforms.ops.synth import SynthConfig

        photo_catalog.fetch_debian(cache)
        train, _ = photo_catalog.split()
        self.photos = train[:limit]
        self.images = [photo_catalog.load(p, cache, max_side) for p in self.photos]
        self.config = SynthConfig(mode="preset", perturb=perturb, grade_prob=grade_prob, vignette_prob=vignette_prob,
                                  identity_prob=identity_prob)
        self.seed = seed
        self.cross_content = cross_content
        self.mosaic_prob = float(mosaic_prob)

    def _crop(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
        if self.mosaic_prob and size >= 2 and rng.random() < self.mosaic_prob:
            half = size // 2
            tiles = [self._single_crop(rng, half) for _ in range(4)]
            arr = np.zeros((size, size, 3), np.uint8)
            for t, (tile, _) in enumerate(tiles):
                r0, c0 = (t // 2) * half, (t % 2) * half
                arr[r0:r0 + half, c0:c0 + half] = tile
            if size % 2:  # odd sizes: repeat the last row/column
                arr[-1], arr[:, -1] = arr[-2], arr[:, -2]
            return arr, tiles[0][1]
        return self._single_crop(rng, size)

    def _single_crop(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
        n = int(rng.integers(len(self.images)))
        img = self.images[n]
        h, w = img.shape[:2]
        side = int(rng.integers(min(size, h, w), min(h, w) + 1))  # scale augmentation
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = Image.fromarray(img[top:top + side, left:left + side])
        if side != size:
            crop = crop.resize((size, size), Image.BILINEAR)
        arr = np.asarray(crop)
        return (arr[:, ::-1].copy() if rng.random() < 0.5 else arr), n

    def sample(self, batch: int, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from chromabeam.transforms.ops.synth import pair_spec, render

        a, b, styles = [], [], []
        for _ in range(batch):
            arr, n = self._crop(rng, size)
            spec = pair_spec(self.config, self.seed, self.photos[n].name, int(rng.integers(2**31)))
            a.append(render(arr, spec["input"]))
            b.append(render(arr, spec["target"]))
            if self.cross_content:  # the same look as view i, on a crop of another photo
                other, m = self._crop(rng, size)
                while len(self.images) > 1 and m == n:
                    other, m = self._crop(rng, size)
                styles.append(render(other, spec["input"]))
        out = [_to_tensor(a), _to_tensor(b)]
        if styles:
            out.append(_to_tensor(styles))
        return tuple(out)

    def sources(self) -> list[str]:
        return [f"{p.name} ({p.source}, {p.path})" for p in self.photos]


def open_views(pairs: str, cfg: TrainConfig):
    if pairs.startswith(PHOTOS_PREFIX):
        return PhotoViews(pairs[len(PHOTOS_PREFIX):] or "/tmp/photo-cache", max_side=cfg.max_side, seed=cfg.seed,
                          limit=cfg.extra.get("photo_limit"), cross_content=cfg.cross_content,
                          perturb=cfg.view_perturb, identity_prob=cfg.view_identity_prob,
                          grade_prob=cfg.view_grade_prob, vignette_prob=cfg.view_vignette_prob,
                          mosaic_prob=cfg.view_mosaic_prob)
    return PairViews(pairs, max_side=cfg.max_side)


# --------------------------------------------------------------------------- checkpoints

def _save_checkpoint(ckpt: str, model: DNCM, opt: torch.optim.Optimizer, state: dict) -> None:
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    storage.put_atomic(storage.join(ckpt, "model.safetensors"), st_save(tensors))
    names = {id(p): n for n, p in model.named_parameters()}
    moments = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                n = names[id(p)]
                moments[f"{n}::exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
                moments[f"{n}::exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
                moments[f"{n}::step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1).cpu()
    storage.put_atomic(storage.join(ckpt, "optimizer.safetensors"), st_save(moments))
    storage.put_atomic(storage.join(ckpt, "state.json"), (json.dumps(state, indent=1) + "\n").encode())


def _load_checkpoint(ckpt: str, model: DNCM, opt: torch.optim.Optimizer, device) -> dict | None:
    from safetensors.torch import load as st_load

    url = storage.join(ckpt, "state.json")
    if not storage.exists(url):
        return None
    state = json.loads(storage.read_bytes(url))
    model.load_state_dict(st_load(storage.read_bytes(storage.join(ckpt, "model.safetensors"))), strict=True)
    moments = st_load(storage.read_bytes(storage.join(ckpt, "optimizer.safetensors")))
    for n, p in model.named_parameters():
        if f"{n}::exp_avg" in moments:
            opt.state[p] = {
                "step": moments[f"{n}::step"].reshape(()).clone(),
                "exp_avg": moments[f"{n}::exp_avg"].to(device),
                "exp_avg_sq": moments[f"{n}::exp_avg_sq"].to(device),
            }
    return state


# --------------------------------------------------------------------------- training

def build_training_model(cfg: TrainConfig) -> DNCM:
    """The DNCM ``cfg`` describes (also how a checkpoint's model is rebuilt)."""
    kw = {}
    if cfg.encoder != "efficientnet":
        kw = {"encoder": cfg.encoder, "stats_hidden": cfg.stats_hidden, "stats_layers": cfg.stats_layers,
              "dropout": cfg.dropout}
    return DNCM(k=cfg.k, encoder_size=cfg.encoder_size, knots=cfg.knots, hist_bins=cfg.hist_bins,
                pretrained=cfg.pretrained, **kw)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """``constant``: cfg.lr; ``cosine``: a linear warm-up over the first 2% of the steps,
    then cfg.lr decayed to 1% of it at cfg.steps (a function of the step only, so a
    resumed run follows the same schedule)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "cosine":
        warm = max(1, cfg.steps // 50)
        if step < warm:
            return cfg.lr * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, cfg.steps - warm))
        return cfg.lr * (0.01 + 0.99 * 0.5 * (1.0 + float(np.cos(np.pi * t))))
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")


def load_checkpoint_model(ckpt: str) -> DNCM:
    """The model of a training checkpoint folder (eval mode, CPU), e.g. to benchmark an
    intermediate step."""
    from safetensors.torch import load as st_load

    state = json.loads(storage.read_bytes(storage.join(ckpt, "state.json")))
    known = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in state.get("config", {}).items() if k in known})
    cfg.pretrained = False
    model = build_training_model(cfg)
    model.load_state_dict(st_load(storage.read_bytes(storage.join(ckpt, "model.safetensors"))), strict=True)
    return model.eval()

def train(pairs: str, weights_out: str | None, cfg: TrainConfig, *, device: str = "auto",
          checkpoint_dir: str | None = None, views=None) -> dict:
    """Train (or resume) and, when ``weights_out`` is given and the run reached
    ``cfg.steps``, save the final weights there. Returns ``{"step", "losses", "weights",
    "device", "seconds"}`` (``weights`` is None when stopped early by the time limit)."""
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    model = build_training_model(cfg)
    model.freeze_encoder(cfg.freeze_blocks)
    model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    ckpt = checkpoint_dir or storage.join(weights_out, "checkpoint")
    state = _load_checkpoint(ckpt, model, opt, dev) or {"step": 0, "log": []}
    if state["step"]:
        log.info("resuming from %s at step %d", storage.redact(ckpt), state["step"])
    state["config"] = asdict(cfg)
    views = views or open_views(pairs, cfg)
    if not state["step"] and cfg.encoder == "stats":  # feature standardisation from training views
        rng = np.random.default_rng([cfg.seed, 2**31 - 1])
        sample = torch.cat([torch.cat(views.sample(cfg.batch_size, cfg.crop, rng)) for _ in range(max(1, 256 // cfg.batch_size))])
        model.encoder.fit_standardisation(model.encoder_view(sample.to(dev)))
    t0, window = time.time(), []
    while state["step"] < cfg.steps:
        step = state["step"]
        rng = np.random.default_rng([cfg.seed, step])  # resumable: the batch depends on the step only
        batch = [t.to(dev) for t in views.sample(cfg.batch_size, cfg.crop, rng)]
        S = batch[2] if len(batch) > 2 else None
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        loss, parts = dncm_loss(model, batch[0], batch[1], cfg.lambda_con, cfg.loss_stride, S, cfg.cross_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state["step"] = step + 1
        window.append(parts)
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
            mean = {k: round(float(np.mean([w.get(k, np.nan) for w in window])), 5) for k in window[-1]}
            state["log"].append({"step": state["step"], **mean, "elapsed_s": round(time.time() - t0, 1)})
            log.info("step %d %s", state["step"], mean)
            print(json.dumps(state["log"][-1]), flush=True)
            window = []
        out_of_time = cfg.time_limit_s is not None and time.time() - t0 > cfg.time_limit_s
        if state["step"] % cfg.checkpoint_every == 0 or state["step"] == cfg.steps or out_of_time:
            _save_checkpoint(ckpt, model, opt, state)
        if out_of_time:
            break
    result = {"step": state["step"], "losses": state["log"][-1] if state["log"] else None,
              "weights": None, "device": str(dev), "seconds": round(time.time() - t0, 1)}
    if weights_out and state["step"] >= cfg.steps:
        result["weights"] = save_trained(model, weights_out, state, views.sources(), pairs)
    return result


def save_trained(model: DNCM, weights_out: str, state: dict, sources: list[str], pairs: str,
                 metrics: dict | None = None, notes: dict | None = None) -> str:
    """Final weights through the registry, with the card (``notes``: extra card fields,
    e.g. the training command)."""
    from chromabeam.models.registry import save_weights

    cfg = state.get("config", {})
    if cfg.get("encoder", "efficientnet") == "stats":
        encoder = (f"stats encoder (global_colour_features → MLP {cfg.get('stats_layers')}×{cfg.get('stats_hidden')}, "
                   f"dropout {cfg.get('dropout')}; no CNN), {cfg.get('encoder_size')} px encoder view")
    else:
        encoder = f"encoder stem + first {cfg.get('freeze_blocks')} blocks frozen (ImageNet)"
    card = {
        "steps": state["step"],
        "training_data": sources,
        "training_pairs": pairs if not pairs.startswith(PHOTOS_PREFIX) else
        "generated on the fly (transforms.ops.synth preset mode: filters, procedural grades "
        f"(probability {cfg.get('view_grade_prob', 0.5)}, vignettes {cfg.get('view_vignette_prob', 0.1)}), "
        f"perturbations {cfg.get('view_perturb', 'light')}, unchanged-photo looks {cfg.get('view_identity_prob', 0.0)}, "
        f"2x2 mosaics of crops {cfg.get('view_mosaic_prob', 0.0)}) "
        "from the TRAIN photos",
        "recipe": "Neural Preset self-supervised: L1 reconstruction of each view from the other's Z + "
                  f"{cfg.get('lambda_con', 10)}·L2 consistency of Z"
                  + (f" + {cfg.get('cross_weight', 1.0)}·L1 cross-content (the look of view i on another photo)"
                     if cfg.get("cross_content", True) and pairs.startswith(PHOTOS_PREFIX) else "")
                  + f"; Adam lr {cfg.get('lr')} ({cfg.get('lr_schedule', 'constant')}), batch {cfg.get('batch_size')} pairs, "
                  f"{cfg.get('crop')} px crops (random scale, flips); {encoder}",
        "final_losses": state["log"][-1] if state["log"] else None,
        "loss_log_every_500": [e for e in state["log"] if e["step"] % 500 == 0],
        "metrics": metrics or {},
        **(notes or {}),
    }
    model = model.cpu().eval()
    return save_weights(model, model.config, weights_out, card)


# --------------------------------------------------------------------------- CLI

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``chromabeam train dncm PAIRS WEIGHTS_OUT`` (positionals already there).
    PAIRS: a synth-pairs --mode preset OUTPUT, or ``photos:CACHE`` for on-the-fly views."""
    d = TrainConfig()
    g = parser.add_argument_group("dncm training")
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (CUDA where none exists is an error)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per step")
    g.add_argument("--crop", type=int, default=d.crop)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--lambda-con", type=float, default=d.lambda_con)
    g.add_argument("--freeze-blocks", type=int, default=d.freeze_blocks,
                   help="encoder blocks (after the stem) kept at their ImageNet weights; -1 trains all")
    g.add_argument("--loss-stride", type=int, default=d.loss_stride,
                   help="colour maps and loss on every N-th pixel of the crop (the encoder sees all)")
    g.add_argument("--no-cross-content", dest="cross_content", action="store_false",
                   help="photos: PAIRS only: drop the cross-content term (the look of view i on another photo)")
    g.add_argument("--knots", type=int, default=d.knots, help="curve basis knots (0: the paper's linear DNCM)")
    g.add_argument("--encoder", choices=("efficientnet", "stats"), default=d.encoder,
                   help="efficientnet: ImageNet CNN + colour statistics; stats: colour statistics → MLP only")
    g.add_argument("--encoder-size", type=int, default=None,
                   help="the encoder's square view (default: 256 for efficientnet, 128 for stats)")
    g.add_argument("--stats-hidden", type=int, default=d.stats_hidden, help="stats encoder: MLP width")
    g.add_argument("--stats-layers", type=int, default=d.stats_layers, help="stats encoder: hidden layers")
    g.add_argument("--dropout", type=float, default=d.dropout, help="stats encoder: dropout between hidden layers")
    g.add_argument("--cross-weight", type=float, default=d.cross_weight, help="weight of the cross-content term")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default=d.lr_schedule)
    g.add_argument("--view-perturb", choices=("none", "light", "full"), default=d.view_perturb,
                   help="photos: PAIRS: perturbations after each look")
    g.add_argument("--view-identity-prob", type=float, default=d.view_identity_prob,
                   help="photos: PAIRS: chance that a look is the unchanged photo")
    g.add_argument("--view-grade-prob", type=float, default=d.view_grade_prob,
                   help="photos: PAIRS: chance of a procedural grade (else a filter)")
    g.add_argument("--view-vignette-prob", type=float, default=d.view_vignette_prob,
                   help="photos: PAIRS: chance that a procedural grade has a vignette")
    g.add_argument("--view-mosaic-prob", type=float, default=d.view_mosaic_prob,
                   help="photos: PAIRS: chance that a crop is a 2x2 mosaic of crops of random photos")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--checkpoint-dir", default=None, help="default: WEIGHTS_OUT/checkpoint")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    g.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="checkpoint and stop after this long (resume later)")
    g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")


def train_command(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
                      lambda_con=args.lambda_con, freeze_blocks=args.freeze_blocks, loss_stride=args.loss_stride,
                      cross_content=args.cross_content, knots=args.knots, encoder=args.encoder,
                      encoder_size=args.encoder_size or (128 if args.encoder == "stats" else 256),
                      stats_hidden=args.stats_hidden, stats_layers=args.stats_layers, dropout=args.dropout,
                      cross_weight=args.cross_weight, lr_schedule=args.lr_schedule,
                      view_perturb=args.view_perturb, view_identity_prob=args.view_identity_prob,
                      view_grade_prob=args.view_grade_prob, view_vignette_prob=args.view_vignette_prob,
                      view_mosaic_prob=args.view_mosaic_prob,
                      seed=args.seed, checkpoint_every=args.checkpoint_every, time_limit_s=args.time_limit)
    result = train(args.pairs, args.weights_out, cfg, device=args.device, checkpoint_dir=args.checkpoint_dir)
    if result["weights"]:
        print(f"dncm: {result['step']} steps → {storage.redact(result['weights'])}")
    else:
        print(f"dncm: stopped at step {result['step']} of {cfg.steps}; rerun to resume")
    return 0
