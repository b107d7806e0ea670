"""A model folder's tokenizers over clips: `ClipTokenizer` holds the tokenizers of a model folder
(``video_tokenizer/``, ``audio_tokenizer/``, ``text.model``, ``vocab.json``) and turns clips (dicts
of media, as `ShapesDataset` and `FolderDataset` give them) into samples of local codes, with the
views the tasks read, and codes back into media; `LazySamples` does it field by field as training
reads them. `videolm.train.tokenize` runs it over a dataset into token shards.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from videolm.core.errors import ConfigError, UsageError
from videolm.core.models import resolve_model
from videolm.core.saving import CONFIG_NAME, load_weights, saved_kind, weights_file
from videolm.tasks.views import VIEW_FIELDS, clip_views
from videolm.tokenizers.audio import AudioTokenizer
from videolm.tokenizers.text import TextTokenizer
from videolm.tokenizers.video import VideoTokenizer, to_frames, to_tensor
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
            self._video = self._load(VideoTokenizer, "video_tokenizer")
        return self._video

    @property
    def audio(self):
        if self._audio is None:
            self._audio = self._load(AudioTokenizer, "audio_tokenizer")
        return self._audio

    @property
    def text(self):
        if self._text is None:
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


def load_tokenizer(model: str, modality: str | None = None):
    """A tokenizer folder, or the `video_tokenizer`/`audio_tokenizer` inside a model bundle."""
    folder = resolve_model(model)
    if not (folder / CONFIG_NAME).exists():
        folder = folder / f"{modality or 'video'}_tokenizer"
    if not (folder / CONFIG_NAME).is_file():
        raise UsageError(f"{folder}: not a saved tokenizer folder (no {CONFIG_NAME})")
    kinds = {cls.kind: cls for cls in (VideoTokenizer, AudioTokenizer)}
    kind = saved_kind(folder)
    if kind is None:  # weights missing, pickled, damaged, or of no kind videolm names
        load_weights(weights_file(folder))
        raise ConfigError(f"{folder}: not a video or audio tokenizer (its weights name no kind)")
    if kind not in kinds:
        raise ConfigError(f"{folder}: holds {_a(kind)}, not a video or audio tokenizer")
    return kinds[kind].from_pretrained(folder)


def _a(kind: str) -> str:
    words = kind.replace("_", " ")
    return f"{'an' if words[:1] in 'aeiou' else 'a'} {words}"


def load_video_tokenizer(name: str | Path) -> VideoTokenizer:
    """The video tokenizer of a folder or model bundle."""
    tok = load_tokenizer(str(name), "video")
    if tok.kind != "video_tokenizer":
        raise ConfigError(f"{name}: holds {_a(tok.kind)}, not a video tokenizer")
    return tok


__all__ = ["ClipTokenizer", "LazySample", "LazySamples", "clip_meta", "has_field", "image_caption", "load_tokenizer",
           "load_video_tokenizer"]
