# The baseline `f3rm-ros bench train --baseline scripts/ns_baseline.py` runs beside f3rm_ros: nerfstudio's nerfacto
# (torch hash grid) plus an F3RM-style feature branch. It was written for this project's benchmarks and run from the
# benchmark machines' shared folder; it is kept here exactly as it produced the numbers in docs/performance.md, in
# its own terse style (hence its flake8 exclusion in setup.cfg). Apache-2.0, like the rest of the repository.
"""Baseline: nerfstudio nerfacto (torch hash grid, no tcnn) + an F3RM-style feature branch on a real scene.
Measures rays/s and held-out PSNR. usage: python ns_baseline.py DATA_DIR STEPS [feat_dim] [amp]   (RAYS env: rays per batch, default 4096)
Measured 2026-11-22 on an H100 with redkitchen (100 frames of 7-Scenes), 2000 steps, amp:
  feat=0: 48.2k rays/s, held-out PSNR 19.4; feat=768: 37.0k rays/s, 5.9 GiB, 231 s.
Same day, another H100, ../data/redkitchen_dev (50 frames), 2000 steps, amp:
  feat=768: 41.7k rays/s, 5.7 GiB, 206 s, held-out PSNR 20.3; feat=0: 60.2k rays/s, 145 s, PSNR 20.2.
Figures move ~25 % between machines and runs: compare only side by side in one device call.
Env: RAYS (rays per batch, 4096); EVAL_EVERY=N (held-out PSNR every N steps, clock stopped, one
"EVAL step=.. train_s=.. psnr=.." line each, so time-to-PSNR is compared on the same schedule as the product);
FEAT_WEIGHTS=live (default, as F3RM: the feature loss reaches the density through the weights) or detach.
train_s in RESULT excludes every held-out evaluation; train_wall includes them (kept for old parsers).
Measured 2026-12-01, H200, redkitchen_dev, 400 steps, EVAL_EVERY=100: live 48.3k rays/s, PSNR 18.22/19.34/19.62/19.80;
detach 47.1k rays/s, PSNR 18.56/19.71/20.07/20.30 (detaching costs nothing in speed here and helps early PSNR)."""
import json, os, sys, time
import numpy as np, torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torchmetrics.image.lpip as _lp
class _NoLPIPS(torch.nn.Module):
    def __init__(self, *a, **k): super().__init__()
    def forward(self, a, b): return torch.tensor(0.0)
_lp.LearnedPerceptualImagePatchSimilarity = _NoLPIPS

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.models.nerfacto import NerfactoModelConfig
from nerfstudio.field_components.encodings import HashEncoding, NeRFEncoding
from nerfstudio.field_components.mlp import MLP

data, STEPS = sys.argv[1], int(sys.argv[2])
FEAT = int(sys.argv[3]) if len(sys.argv) > 3 else 0
AMP = len(sys.argv) > 4 and sys.argv[4] == "amp"
dev = "cuda" if torch.cuda.is_available() else "cpu"
meta = json.load(open(os.path.join(data, "transforms.json")))
imgs, c2ws = [], []
for f in meta["frames"]:
    imgs.append(np.asarray(Image.open(os.path.join(data, f["file_path"])).convert("RGB"), np.float32) / 255.0)
    c2ws.append(np.array(f["transform_matrix"], np.float32)[:3])
imgs, c2ws = np.stack(imgs), np.stack(c2ws)
pos = c2ws[:, :, 3]
c2ws[:, :, 3] = (pos - pos.mean(0)) / np.abs(pos - pos.mean(0)).max()
N, H, W = imgs.shape[:3]
ev = np.arange(N) % 8 == 0
tr = ~ev
cams = Cameras(camera_to_worlds=torch.from_numpy(c2ws), fx=meta["fl_x"], fy=meta["fl_y"], cx=meta["cx"], cy=meta["cy"],
               width=W, height=H, camera_type=CameraType.PERSPECTIVE).to(dev)
images = torch.from_numpy(imgs).to(dev)
cfg = NerfactoModelConfig(implementation="torch", camera_optimizer=CameraOptimizerConfig(mode="SO3xR3"))
model = cfg.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=N, metadata={}).to(dev)
params = {"proposal_networks": model.get_param_groups()["proposal_networks"], "fields": model.get_param_groups()["fields"]}
feat_net = None
if FEAT:
    enc = HashEncoding(num_levels=12, min_res=16, max_res=128, log2_hashmap_size=19, features_per_level=8, implementation="torch")
    pe = NeRFEncoding(in_dim=3, num_frequencies=6, min_freq_exp=0, max_freq_exp=5, implementation="torch")
    mlp = MLP(in_dim=enc.get_out_dim() + pe.get_out_dim(), num_layers=3, layer_width=64, out_dim=FEAT, implementation="torch")
    feat_net = torch.nn.ModuleList([enc, pe, mlp]).to(dev)
    params["feat"] = list(feat_net.parameters())
    target_feats = torch.randn(N, H // 14, W // 14, FEAT, device=dev, dtype=torch.float16)
raygen = RayGenerator(cams).to(dev)
opt = torch.optim.Adam([{"params": v, "lr": 1e-2} for v in params.values()], eps=1e-15)
cbs = model.get_training_callbacks(TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=None, trainer=None))
scaler = torch.amp.GradScaler(enabled=AMP)
tr_idx = torch.from_numpy(np.nonzero(tr)[0]).to(dev)
RAYS = int(os.environ.get("RAYS", 4096))
EVAL_EVERY = int(os.environ.get("EVAL_EVERY", 0))
DETACH = os.environ.get("FEAT_WEIGHTS", "live") == "detach"


def heldout_psnr():
    model.eval()
    psnrs = []
    with torch.no_grad():
        for i in np.nonzero(ev)[0][:6]:
            o = model.get_outputs_for_camera(cams[int(i):int(i) + 1])
            psnrs.append(-10 * np.log10(((o["rgb"] - images[int(i)]) ** 2).mean().item()))
    model.train()
    return float(np.mean(psnrs))


model.train()
t_start = time.time(); marks = []; paused = 0.0
for step in range(STEPS):
    for cb in cbs: cb.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    ci = tr_idx[torch.randint(0, len(tr_idx), (RAYS,), device=dev)]
    yi = torch.randint(0, H, (RAYS,), device=dev); xi = torch.randint(0, W, (RAYS,), device=dev)
    rb = raygen(torch.stack([ci, yi, xi], -1))
    with torch.autocast(device_type="cuda", enabled=AMP):
        out = model(rb)
        batch = {"image": images[ci, yi, xi]}
        losses = model.get_loss_dict(out, batch, model.get_metrics_dict(out, batch))
        if feat_net is not None:
            # F3RM-style: feature field at the final samples, rendered with the shared weights
            rs = out["ray_samples_list"][-1]
            p = model.field.spatial_distortion(rs.frustums.get_positions().detach())
            p = (p + 2.0) / 4.0
            flat = p.view(-1, 3)
            f = feat_net[2](torch.cat([feat_net[0](flat), feat_net[1](flat)], -1)).view(*p.shape[:-1], -1)
            w = out["weights_list"][-1]
            rf = ((w.detach() if DETACH else w) * f).sum(-2)
            tgt = target_feats[ci, (yi * (H // 14)) // H, (xi * (W // 14)) // W].float()
            losses["feat"] = 1e-3 * torch.nn.functional.mse_loss(rf, tgt)
        loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
    for cb in cbs: cb.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    if step in (19, STEPS - 1):
        torch.cuda.synchronize() if dev == "cuda" else None
        marks.append((step, time.time() - paused))
    if EVAL_EVERY and (step + 1) % EVAL_EVERY == 0 and step + 1 < STEPS:
        torch.cuda.synchronize() if dev == "cuda" else None
        e0 = time.time(); p = heldout_psnr(); paused += time.time() - e0
        print(f"EVAL step={step + 1} train_s={time.time() - t_start - paused:.2f} psnr={p:.2f}", flush=True)
(s0, t0), (s1, t1) = marks
rps = (s1 - s0) * RAYS / (t1 - t0)
torch.cuda.synchronize() if dev == "cuda" else None
train_s = time.time() - t_start - paused
final = heldout_psnr()
print(f"EVAL step={STEPS} train_s={train_s:.2f} psnr={final:.2f}", flush=True)
print(f"RESULT dev={dev} feat={FEAT} amp={AMP} steps={STEPS} rays_per_s={rps:.0f} s_per_step={(t1-t0)/(s1-s0)*1000:.1f}ms "
      f"train_wall={time.time()-t_start:.1f}s heldout_psnr={final:.2f} peak_mem={torch.cuda.max_memory_allocated()/2**30 if dev=='cuda' else 0:.2f}GiB "
      f"train_s={train_s:.1f}s feat_weights={'detach' if DETACH else 'live'} eval_every={EVAL_EVERY}")
