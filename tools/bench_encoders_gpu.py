"""Issue 16 on the H200: LivePortrait's full-size motion extractor (random weights) fp16 vs fp32,
throughput; a base-sized HuBERT (random) through our windowed encoder on CUDA vs CPU."""

import tempfile
import time

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

from df_data.encoders.speech import HFSpeechEncoder
from df_data.structure.liveportrait import LivePortraitExtractor
from df_models.liveportrait.motion_extractor import MotionExtractor

print("transformers", transformers.__version__, flush=True)
d = tempfile.mkdtemp()
torch.manual_seed(0)
m = MotionExtractor()
m.init_weights()
p = f"{d}/motion_extractor.safetensors"
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, p)
frames = (np.random.default_rng(0).random((256, 512, 512, 3)) * 255).astype(np.uint8)
cpu = LivePortraitExtractor(p, device="cpu").raw(frames[:16])
ex = LivePortraitExtractor(p, device="cuda", batch_size=64)
gpu = ex.raw(frames[:16])
for k in ("pitch", "yaw", "t", "exp", "scale"):
    a, b = cpu[k], gpu[k]
    print(
        f"LP {k}: max|fp16-fp32| {float((a - b).abs().max()):.4g} (fp32 range {float(a.abs().max()):.3g})",
        flush=True,
    )
s_cpu, s_gpu = ex(frames[:16]).struct, LivePortraitExtractor(p, device="cpu")(frames[:16]).struct
print(
    "LP struct (70) max|diff|",
    float((torch.as_tensor(s_cpu) - torch.as_tensor(s_gpu)).abs().max()),
    flush=True,
)
ex(frames[:64])
torch.cuda.synchronize()
t = time.perf_counter()
ex(frames)
torch.cuda.synchronize()
print(
    f"LP extractor on CUDA: {256 / (time.perf_counter() - t):.0f} frames/s (512^2 crops, incl. host resize)",
    flush=True,
)

hf = f"{d}/hubert"
cfg = transformers.HubertConfig(
    do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True
)
transformers.HubertModel(cfg).save_pretrained(hf)
transformers.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(hf)
audio = np.random.default_rng(1).standard_normal(16000 * 60).astype(np.float32) * 0.1
enc_g = HFSpeechEncoder("hubert", hf, layer="all", device="cuda", batch_windows=64)
enc_c = HFSpeechEncoder("hubert", hf, layer="all", device="cpu")
a, b = enc_c.encode(audio[: 16000 * 4]), enc_g.encode(audio[: 16000 * 4])
print(
    "HuBERT-base all layers",
    tuple(b.shape),
    "max|cuda-cpu|",
    float((a - b).abs().max()),
    flush=True,
)
enc_g.encode(audio[: 16000 * 5])
torch.cuda.synchronize()
t = time.perf_counter()
f = enc_g.encode(audio)
torch.cuda.synchronize()
print(
    f"HuBERT-base windows on CUDA: 60 s of audio in {time.perf_counter() - t:.2f} s, {tuple(f.shape)}",
    flush=True,
)
