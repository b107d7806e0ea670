"""The measurements a task's `score` draws on: a `Scorer` over one set of held-out Shapes clips.

Tasks live below evaluation (they must not load a probe), so `videolm eval` and `videolm finetune`
hand each task's `Task.score` a `Scorer` holding what measuring needs: the probe classifier, the
clips (ground truth, the objects each asked for), their tokenized samples, the probe features of
the real clips and the model folder's tokenizer. The task picks the measurements that fit it and the
copy baseline that fits it; the scorer computes them the same way for every task:

- `attributes`: probe attribute accuracy against the objects the clips asked for;
- `frechet`: ``fd_probe``, the Fréchet distance between the probe's features of generated and of
  real clips;
- `compare`: PSNR/SSIM against the truth beside a copy baseline, per-clip mean and pooled;
- `masked`: PSNR inside a mask (the generated region of inpaint/outpaint) beside a baseline;
- `silhouettes`: silhouette IoU against structure videos and the colour of each silhouette;
- `soundtrack`: tone accuracy and bounce-click timing of generated audio;
- `decoded_targets`: the truth's own codes decoded, the best an LM can emit (the ceiling).

``per_clip`` (one dict per clip, or None) receives each clip's ``[hits, count]`` for every
accuracy figure of the model's own outputs (what ``videolm eval --against`` pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from videolm.core import metrics as quality
from videolm.data.shapes import ATTRIBUTES
from videolm.evaluation import metrics as M
from videolm.evaluation.probe import frechet_distance


def attribute_accuracy(predicted: list[dict], wanted: list[list[dict]], attributes=ATTRIBUTES,
                       per_clip: list[dict] | None = None) -> dict:
    """Per attribute, the fraction of wanted objects the probe's readings get right (objects paired
    by the best matching); ``per_clip`` receives each clip's ``[hits, count]``."""
    totals = {a: [0, 0] for a in attributes}
    for i, (pred, want) in enumerate(zip(predicted, wanted)):
        for a, (hit, n) in M.match_objects(want, pred["objects"], attributes).items():
            totals[a][0] += hit
            totals[a][1] += n
            if per_clip is not None:
                per_clip[i][a] = [int(hit), int(n)]
    return {a: round(hit / n, 4) for a, (hit, n) in totals.items()}


def psnr_ssim(made: np.ndarray, truth: np.ndarray, mask=None) -> tuple[float, float | None]:
    """Mean over clips of PSNR (inside ``mask``, one per clip, where given) and of SSIM (none with a mask)."""
    psnr = float(np.mean([quality.psnr(m, t, None if mask is None else mask[i])
                          for i, (m, t) in enumerate(zip(made, truth))]))
    ssim = float(np.mean([quality.ssim(m, t) for m, t in zip(made, truth)])) if mask is None else None
    return round(psnr, 2), (None if ssim is None else round(ssim, 4))


def pooled_psnr(made: np.ndarray, truth: np.ndarray, mask=None) -> float:
    """PSNR of the squared error averaged over every clip (and pixel of ``mask``) at once. The mean
    of per-clip PSNRs lets a few exact clips dominate: copying the last frame of a clip whose
    objects stand still is exact (~148 dB), and no generator that is not exact can match it."""
    return round(quality.psnr(made, truth, mask), 2)


@dataclass
class Scorer:
    """Measurements of generated media against held-out ``clips`` (Shapes clips with ``video``,
    ``meta``, ...) and their tokenized ``samples``."""

    probe: object  # a `videolm.evaluation.probe.Probe`
    clips: list[dict]
    samples: list[dict]
    tokenizer: object = None  # a `videolm.tasks.tokenizing.ClipTokenizer`, for `decoded_targets`
    real_features: np.ndarray | None = None  # the probe's features of the clips (computed when None)
    per_clip: list[dict] | None = None
    _truth: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.real_features is None:
            self.real_features = self.features(self.truth)

    @property
    def truth(self) -> np.ndarray:
        """``(N, T, H, W, 3)`` uint8: the clips themselves."""
        if self._truth is None:
            self._truth = np.stack([c["video"] for c in self.clips])
        return self._truth

    @property
    def objects(self) -> list[list[dict]]:
        """The objects each clip asked for."""
        return [c["meta"]["objects"] for c in self.clips]

    @staticmethod
    def videos(made: list) -> np.ndarray:
        """``(N, T, H, W, 3)``: the frames of a list of `Media`."""
        return np.stack([m.video for m in made])

    def features(self, videos: np.ndarray) -> np.ndarray:
        return self.probe.features(videos).detach().numpy()

    # -- probe readings

    def attributes(self, videos: np.ndarray, names=ATTRIBUTES, wanted: list[list[dict]] | None = None,
                   record: bool = True) -> dict:
        """Accuracy per attribute in ``names`` of the probe's reading of ``videos`` against ``wanted``
        (default: the clips' objects). ``record``: into ``per_clip`` (the model's own outputs)."""
        if not names:
            return {}
        return attribute_accuracy(self.probe.predict(videos), self.objects if wanted is None else wanted, names,
                                  self.per_clip if record else None)

    def frechet(self, videos: np.ndarray) -> dict:
        return {"fd_probe": round(float(frechet_distance(self.features(videos), self.real_features)), 3)}

    # -- pixels against a truth

    def compare(self, made: np.ndarray, truth: np.ndarray, baseline: np.ndarray) -> dict:
        """PSNR/SSIM of ``made`` and of the copy ``baseline`` against ``truth`` (all ``(N, T, H, W, 3)``)."""
        psnr, ssim = psnr_ssim(made, truth)
        baseline = np.array(np.broadcast_to(baseline, truth.shape))  # a writable copy, as torch wants
        base_psnr, base_ssim = psnr_ssim(baseline, truth)
        pooled, base_pooled = pooled_psnr(made, truth), pooled_psnr(baseline, truth)
        return {"psnr": psnr, "ssim": ssim, "baseline_psnr": base_psnr, "baseline_ssim": base_ssim,
                "psnr_over_baseline": round(psnr - base_psnr, 2), "psnr_pooled": pooled,
                "baseline_psnr_pooled": base_pooled, "pooled_over_baseline": round(pooled - base_pooled, 2)}

    def masked(self, made: np.ndarray, truth: np.ndarray, masks: np.ndarray, baseline: np.ndarray,
               baseline_name: str) -> dict:
        """PSNR inside ``masks`` (``(N, T, H, W)`` bool) of ``made`` and of ``baseline``."""
        psnr, _ = psnr_ssim(made, truth, masks)
        base, _ = psnr_ssim(baseline, truth, masks)
        return {"psnr_masked": psnr, "baseline_psnr_masked": base,
                "psnr_masked_pooled": pooled_psnr(made, truth, masks),
                "baseline_psnr_masked_pooled": pooled_psnr(baseline, truth, masks), "baseline": baseline_name}

    def mean_psnr(self, made, truth) -> float:
        return round(float(np.mean([quality.psnr(m, t) for m, t in zip(made, truth)])), 2)

    # -- Shapes-specific readings

    def silhouettes(self, videos: np.ndarray, structures: list[np.ndarray]) -> dict:
        """How well ``videos`` fill the silhouettes of ``structures``, and with the colours asked for."""
        iou = np.mean([M.silhouette_iou(v, s) for v, s in zip(videos, structures)])
        hit = total = 0
        for i, (v, s, want) in enumerate(zip(videos, structures, self.objects)):
            colors = M.silhouette_colors(v, s)
            hits = sum(a == o["color"] for a, o in zip(colors, want))
            hit += hits
            total += len(want)
            if self.per_clip is not None:
                self.per_clip[i]["color"] = [int(hits), len(want)]
        return {"silhouette_iou": round(float(iou), 4), "color": round(hit / total, 4)}

    def soundtrack(self, waves: list[np.ndarray]) -> dict:
        """Whether each wave hums the tones its clip's shapes make, and how far its bounce clicks
        fall from the bounces."""
        tones, errors = [], []
        for i, (wave, objects) in enumerate(zip(waves, self.objects)):
            tones.append(bool(M.tone_accuracy(wave, objects)))
            if self.per_clip is not None:
                self.per_clip[i]["tone"] = [int(tones[-1]), 1]
            err = M.bounce_timing_error(wave, sorted(b for o in objects for b in o["bounces"]))
            if err is not None:
                errors.append(err)
        return {"tone": round(float(np.mean(tones)), 4),
                "bounce_timing_error_s": round(float(np.mean(errors)), 4) if errors else None,
                "clips_with_bounces": len(errors)}

    # -- the ceiling

    def decoded_targets(self, task) -> np.ndarray:
        """The task's true output codes decoded back to video: the best the LM can emit."""
        return np.stack([task.to_media(task.target_codes(s), s, self.tokenizer).video for s in self.samples])


__all__ = ["Scorer", "attribute_accuracy", "pooled_psnr", "psnr_ssim"]
