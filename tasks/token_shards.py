"""`videolm tokenize`: clips encoded once by a model folder's frozen tokenizers into token shards.

`ClipTokenizer` holds the tokenizers of a model folder (``video_tokenizer/``, ``audio_tokenizer/``,
``text.model``, ``vocab.json``) and turns clips (dicts of media, as `ShapesDataset` and
`FolderDataset` give them) into samples of local codes, and codes back into media.
`write_token_shards` runs it over a dataset into a shard folder (`videolm.lm.data`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from videolm.lm.data import CODE_FIELDS, ShardWriter
from videolm.core.models import resolve_model
from videolm.core.outputs import atomic_output_dir
from videolm.core.errors import DataError, UsageError
from videolm.tokenizers.vocab import Vocabulary


class ClipTokenizer:
    """The frozen tokenizers of a model folder, loaded when first needed."""

    def __init__(self, model: str | Path = "shapes-64", device: str = "cpu"):
        self.folder = resolve_model(model).absolute()
        self.device = torch.device(device)
        self.vocab = Vocabulary.load(self.folder)
        self._video = self._audio = self._text = None

    @property
    def video(self):
        if self._video is None:
            from videolm.tokenizers.video import VideoTokenizer

            self._video = self._load(VideoTokenizer, "video_tokenizer")
        return self._video

    @property
    def audio(self):
        if self._audio is None:
            from videolm.tokenizers.audio import AudioTokenizer

            self._audio = self._load(AudioTokenizer, "audio_tokenizer")
        return self._audio

    @property
    def text(self):
        if self._text is None:
            from videolm.tokenizers.text import TextTokenizer

            if not (self.folder / "text.model").is_file():
                raise UsageError(f"{self.folder}: has no text.model (a model folder needs video_tokenizer/, "
                                 "audio_tokenizer/, text.model and vocab.json)")
            self._text = TextTokenizer.load(self.folder)
        return self._text

    def _load(self, cls, part: str):
        if not (self.folder / part).is_dir():
            raise UsageError(f"{self.folder}: has no {part}/ (a model folder needs video_tokenizer/, "
                             "audio_tokenizer/, text.model and vocab.json)")
        return cls.from_pretrained(self.folder / part).to(self.device).eval()

    # -- clips -> samples

    @torch.no_grad()
    def encode(self, clips: Sequence[dict], views: bool = True,
               extra: Callable[[dict], dict[str, np.ndarray]] | None = None) -> list[dict]:
        """Clips of one size -> samples: ``text (n,)``, ``video (t, n)``, ``structure (t, n)`` if the
        clip has one, ``audio (F, Q)`` if it has audio; int64 local codes, plus metadata. ``views``:
        also the codes of the views the tasks read (`videolm.tasks.views`) and ``image_text``, the
        caption without its motion. ``extra(clip)``: more videos to tokenize into the sample by
        name (a task's `Task.views`). `LazySamples` gives the same samples, each field tokenized
        only when read."""
        made = [self.clip_fields(c, views, extra) for c in clips]
        names = [name for name in made[0][1] if name != "audio" and all(name in f for _, f in made)]  # in every clip
        codes = {name: self.encode_field(name, [fields[name] for _, fields in made]) for name in names}  # (B, t, n)
        with_audio = [i for i, (_, fields) in enumerate(made) if "audio" in fields]
        audio = {}
        if with_audio:
            audio = dict(zip(with_audio, self.encode_field("audio", [made[i][1]["audio"] for i in with_audio])))
        samples = []
        for i, (sample, _) in enumerate(made):
            sample.update({name: c[i] for name, c in codes.items()})
            if i in audio:
                sample["audio"] = audio[i]
            samples.append(sample)
        return samples

    def clip_fields(self, clip: dict, views: bool = True,
                    extra: Callable[[dict], dict[str, np.ndarray]] | None = None) -> tuple[dict, dict]:
        """One clip -> (its sample without codes: text ids and metadata, which cost little; the
        media each code field is tokenized from: videos ``(T, H, W, 3)`` by field, and
        ``audio (S,)`` where the clip has audio)."""
        from videolm.tasks.views import VIEW_FIELDS, clip_views

        fields = {"video": clip["video"]}
        if clip.get("structure") is not None:
            fields["structure"] = clip["structure"]
        caption = clip.get("caption") or ""
        sample = {"text": self.encode_text(caption), **clip_meta(clip)}
        if views:
            made, meta = clip_views(np.asarray(clip["video"]), int(clip.get("seed") or 0))
            sample.update(meta)
            sample["image_text"] = self.encode_text(image_caption(caption))
            fields.update({name: made[name] for name in VIEW_FIELDS})
        if extra is not None:
            fields.update(extra(clip))
        if clip.get("has_audio", True):
            fields["audio"] = clip["audio"]
        return sample, fields

    def encode_field(self, name: str, media: Sequence[np.ndarray]) -> torch.Tensor:
        """One code field of several clips: ``audio`` waves ``(S,)`` -> ``(B, F, Q)``; any other
        field's videos ``(T, H, W, 3)`` -> ``(B, t, n)``."""
        if name == "audio":
            with torch.no_grad():
                wave = torch.from_numpy(np.stack(media)).float().to(self.device)  # (B, S)
                return self.audio.encode(wave).cpu()
        return self.encode_video(media)

    @torch.no_grad()
    def encode_video(self, videos) -> torch.Tensor:
        """Videos of one size, ``(B, T, H, W, 3)`` uint8 (or a list of them) -> codes ``(B, t, n)``."""
        from videolm.tokenizers.video import to_tensor

        return self.video.encode(to_tensor(np.stack(videos)).to(self.device)).cpu()

    def geometry(self, frames: int = 17, height: int = 64, width: int = 64, fps: int = 8) -> dict:
        """The sizes a generated clip has, as tasks read them from a sample: ``frames``,
        ``height``, ``width``, ``latents``, ``tokens_per_frame``, ``num_samples`` (audio of the
        clip's duration) and ``audio_shape`` ``(F, Q)``."""
        rate = self.audio.config.sample_rate
        num_samples = round(frames * rate / fps)
        return {"frames": frames, "height": height, "width": width, "fps": fps,
                "latents": self.video.latent_frames(frames), "tokens_per_frame": self.video.tokens_per_frame(height, width),
                "num_samples": num_samples, "sample_rate": rate,
                "audio_shape": (self.audio.num_frames(num_samples), self.audio.config.num_quantizers)}

    @torch.no_grad()
    def encode_audio(self, wave: np.ndarray) -> torch.Tensor:
        """``(S,)`` float32 -> codes ``(F, Q)``."""
        return self.audio.encode(torch.as_tensor(wave, dtype=torch.float32)[None].to(self.device))[0].cpu()

    def encode_text(self, text: str) -> torch.Tensor:
        return torch.tensor(self.text.encode(text), dtype=torch.long)

    # -- codes -> media

    @torch.no_grad()
    def decode_video(self, codes: torch.Tensor, height: int, width: int) -> np.ndarray:
        """Local codes ``(t, n)`` -> uint8 frames ``(T, H, W, 3)``."""
        from videolm.tokenizers.video import to_frames

        return to_frames(self.video.decode(codes[None].to(self.device), height, width))[0]

    @torch.no_grad()
    def decode_audio(self, codes: torch.Tensor, num_samples: int | None = None) -> np.ndarray:
        """Local codes ``(F, Q)`` -> float32 samples ``(S,)``."""
        return self.audio.decode(codes[None].to(self.device), num_samples)[0].float().cpu().numpy()


def image_caption(caption: str) -> str:
    """A Shapes caption without its motion ("a large red circle moves left" -> "a large red
    circle"): the text of a still image. Other captions come back as they are."""
    return re.sub(r" (?:moves (?:left|right|up|down)|stays still)", "", caption)


def clip_meta(clip: dict) -> dict:
    """What a sample keeps of its clip besides the codes: caption, sizes, and where it came from."""
    frames, height, width, _ = np.shape(clip["video"])
    meta = {"caption": clip.get("caption") or "", "frames": int(frames), "height": int(height), "width": int(width)}
    if clip.get("has_audio", True):
        meta["num_samples"] = int(np.shape(clip["audio"])[0])
    for key in ("seed", "path", "start"):
        if clip.get(key) is not None:
            meta[key] = clip[key]
    return meta


# ------------------------------------------------------------------------------ lazy samples


class LazySamples(Dataset):
    """The samples of a clip dataset (as `ClipTokenizer.encode` makes them), each code field
    tokenized the first time something reads it, and kept.

    A task mixture draws one task per sequence, and a task reads one or two of the fields a clip
    has (the clip, a view of it, its audio), so tokenizing every field of every clip up front is
    mostly wasted: on 2 CPU cores a Shapes clip costs about 90 ms with all its views and 13-18 ms
    per video field. Clips are drawn again from ``clips`` when a field is needed (Shapes renders
    one in a few milliseconds), so only codes are held. Fields are tokenized one clip at a time,
    or a DataLoader batch at a time through `prefetch`, so their codes can differ from those of
    `ClipTokenizer.encode` over other batches where a latent sits within float rounding of a
    quantization boundary."""

    def __init__(self, clips: Dataset, tokenizer: ClipTokenizer, views: bool = True,
                 extra: Callable[[dict], dict[str, np.ndarray]] | None = None):
        self.clips, self.tokenizer, self.views, self.extra = clips, tokenizer, views, extra
        self.codes: list[dict[str, torch.Tensor]] = [{} for _ in range(len(clips))]  # per clip, fields read so far

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> LazySample:
        return LazySample(self, i)

    def prefetch(self, samples: Sequence[LazySample], fields: Sequence[Sequence[str]]) -> None:
        """Tokenize ``fields[j]`` of ``samples[j]`` (those not yet tokenized), each field in one
        batch (13 ms a clip against 18 one at a time on 2 cores)."""
        wanted: dict[str, list[LazySample]] = {}
        for sample, names in zip(samples, fields):
            for name in names:
                if name in sample._media and name not in self.codes[sample._i]:
                    wanted.setdefault(name, []).append(sample)
        for name, group in wanted.items():
            group = list({s._i: s for s in group}.values())  # a clip drawn twice in one batch: once
            for s, c in zip(group, self.tokenizer.encode_field(name, [s._media[name] for s in group])):
                self.codes[s._i][name] = c


class LazySample(Mapping):
    """One clip's sample from `LazySamples`: metadata and text at once, codes when read. ``name in
    sample`` says whether the field exists without tokenizing it."""

    def __init__(self, owner: LazySamples, i: int):
        self._owner, self._i = owner, i
        self._meta, self._media = owner.tokenizer.clip_fields(owner.clips[i], owner.views, owner.extra)

    def __getitem__(self, name: str):
        if name in self._meta:
            return self._meta[name]
        codes = self._owner.codes[self._i]
        if name not in codes:
            codes[name] = self._owner.tokenizer.encode_field(name, [self._media[name]])[0]  # KeyError: no such field
        return codes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._meta or name in self._media

    def __iter__(self):
        return iter([*self._meta, *self._media])

    def __len__(self) -> int:
        return len(self._meta) + len(self._media)


def has_field(sample, name: str) -> bool:
    """Whether ``sample`` (a dict, or a `LazySample` without tokenizing) holds field ``name``."""
    if isinstance(sample, LazySample):
        return name in sample
    return sample.get(name) is not None


# ---------------------------------------------------------------------------------- datasets


@dataclass
class ClipSource:
    """Which clips to tokenize: Shapes (seeded) or a folder of videos."""

    data: str = "shapes"  # "shapes" or a folder of videos
    num: int = 1024
    seed: int = 0  # Shapes: first seed offset; folder: first clip
    split: Literal["train", "eval"] = "train"  # Shapes only
    frames: int = 17
    height: int = 64
    width: int = 64
    fps: int = 8

    def dataset(self) -> Dataset:
        if self.data == "shapes":
            from videolm.data.shapes import ShapesConfig
            from videolm.data.shapes_data import ShapesDataset

            world = ShapesConfig(height=self.height, width=self.width, frames=self.frames, fps=self.fps)
            return ShapesDataset(self.num, seed=self.seed, split=self.split, world=world)
        from videolm.data.folder import FolderDataset

        folder = FolderDataset(self.data, frames=self.frames, fps=self.fps, size=(self.height, self.width))
        if self.seed >= len(folder):
            raise DataError(f"{self.data}: has {len(folder)} clips; none from clip {self.seed} on")
        return Subset(folder, range(self.seed, min(self.seed + self.num, len(folder))))


def write_token_shards(out: str | Path, source: ClipSource, model: str | Path = "shapes-64", batch_size: int = 16,
                       shard_size: int = 1024, overwrite: bool = False,
                       progress: Callable[[int], object] | None = None, device: str = "cpu") -> dict:
    """Encode ``source``'s clips with ``model``'s tokenizers into a shard folder (all or nothing).
    The folder's vocabulary is the model's, with the clips' resolution added if it lacked it.
    ``device``: where the tokenizers run ("cpu", "cuda", "cuda:1", or "auto": a GPU when there is one).
    Returns a JSON-ready summary."""
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} must be >= 1")
    tokenizer = ClipTokenizer(model, device=resolve_device(device))
    clips = source.dataset()
    vocab = tokenizer.vocab
    vocab.add_resolution(source.height, source.width)
    tokens = 0
    with atomic_output_dir(out, overwrite=overwrite, command="tokenize") as tmp:
        writer = ShardWriter(tmp, shard_size)
        for start in range(0, len(clips), batch_size):
            batch = [clips[i] for i in range(start, min(start + batch_size, len(clips)))]
            for sample in tokenizer.encode(batch):
                codes = {k: sample.pop(k) for k in CODE_FIELDS if k in sample}
                tokens += sum(codes[k].numel() for k in ("text", "video", "audio") if k in codes)
                writer.add(codes, sample)
            if progress:
                progress(len(batch))
        vocab.save(tmp)
        writer.close({"model": str(tokenizer.folder), "source": vars(source)})
    return {"out": str(out), "clips": len(clips), "shards": len(writer.shards),
            "tokens_per_clip": round(tokens / max(1, len(clips)), 1), "vocabulary": len(vocab)}


def resolve_device(device: str) -> str:
    """``device`` checked against this machine: "auto" is "cuda" where a GPU is present, else "cpu";
    a named GPU that is not there is a UsageError rather than a CUDA error later."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device}: not a device name (cpu, cuda, cuda:N or auto)") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available()
                                  or (parsed.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {device}: no such CUDA device on this machine")
    if parsed.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: only cpu and cuda are supported")
    return device


__all__ = ["ClipSource", "ClipTokenizer", "LazySample", "LazySamples", "clip_meta", "has_field", "resolve_device",
           "write_token_shards"]
