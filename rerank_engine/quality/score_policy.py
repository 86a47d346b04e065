"""The score policy: which score the job writes and thresholds, resolved once from the model folder, the
recall model and the config, and used by the job, `finalize`, calibration and evaluation alike.

Light module: numpy and pyarrow (for `schema`); the fp32 sigmoid is imported where a batch is scored.

A model folder may hold two calibration records, both written by `python -m jobs.calibrate`:

    <model>/threshold.json   the reranker's own score, sigmoid(logit), and its best-F1 threshold
    <model>/fusion.json      the fused score, sigmoid(scale · (logit + w · cosine) + bias), fitted on one
                             bi-encoder's cosines, and its own best-F1 threshold

The job's policy (`ScorePolicy.for_job`):

    fusion     fusion.json where `fusion` is auto and the file exists, names this model and was fitted on
               the index's bi-encoder (on: the same, anything missing is an error; off: never; logged
               candidates carry no cosines, so they are never fused)
    threshold  the config's `threshold`, else the record of the score in use (fusion.json's threshold, or
               threshold.json's, which must name this model on the probability scale), else 0.5
    max_length the config's `tokenizer.max_length` where it sets one (a warning where the record was
               calibrated at another), else the record's, else the config's default

Each comes with where it came from ("config", "default" or the record's path), written to the run
summary; the output's `score_kind` column names the score (`schema.SCORE_KINDS`).

    policy = ScorePolicy.for_job(config, manifest.model_id, recall_model)   # None: logged candidates
    config = policy.serve(config)                                           # the calibrated max_length
    order, scores = policy.scores(logits, recall_scores)
    kept = policy.keep(scores)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rerank_engine import schema
from rerank_engine.errors import ConfigError, ScaleMismatchError
from rerank_engine.quality.fusion import Fusion
from rerank_engine.quality.thresholds import PROBABILITY, Threshold
from rerank_engine.serving.hashing import FUSION_FILE, THRESHOLD_FILE

if TYPE_CHECKING:
    from rerank_engine.config import JobConfig

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
CONFIG, DEFAULT = "config", "default"  # sources that are not a record
LOGGED = "logged"  # the recall model named for logged candidates (they carry no cosines)


# -- the calibration records in a model folder ----------------------------------------------------------


def read_threshold(model_dir: str | Path, model_id: str) -> Threshold | None:
    """The model's `threshold.json`, checked to be `model_id`'s on the probability scale; None where the
    folder has none."""
    path = Path(model_dir) / THRESHOLD_FILE
    if not path.is_file():
        return None
    threshold = Threshold.load(path)
    try:
        threshold.check(model_id=model_id, scale=PROBABILITY)
    except ScaleMismatchError as exc:
        raise ScaleMismatchError(f"{path}: {exc}") from None
    return threshold


def read_fusion(model_dir: str | Path, model_id: str, hint: str = "") -> Fusion | None:
    """The model's `fusion.json`, checked to be fitted for `model_id` (`hint` ends the error); None where
    the folder has none."""
    path = Path(model_dir) / FUSION_FILE
    if not path.is_file():
        return None
    fusion = Fusion.load(path)
    try:
        fusion.check(model_id=model_id)
    except ScaleMismatchError as exc:
        raise ScaleMismatchError(f"{path}: {exc}{hint}") from None
    return fusion


def calibration_record(model_dir: str | Path, fusion: Fusion | None = None) -> dict | None:
    """The record the score in use was calibrated by (`jobs.calibrate`'s: its settings and figures): the
    fusion's where the score is fused, else the model's `threshold.json`'s; None where there is none."""
    if fusion is not None:
        return fusion.calibration
    path = Path(model_dir) / THRESHOLD_FILE
    if not path.is_file():
        return None
    return Threshold.load(path).calibration


def calibration_settings(model_dir: str | Path, fusion: Fusion | None = None) -> dict | None:
    """The settings the score in use was calibrated with (`calibration_record`); None where there is no
    calibration."""
    record = calibration_record(model_dir, fusion)
    return None if record is None else record.get("settings", {})


def calibrated_max_length(model_dir: str | Path, fusion: Fusion | None = None) -> int | None:
    """The max_length the score in use was calibrated at (`calibration_settings`); None where no
    calibration records one."""
    return (calibration_settings(model_dir, fusion) or {}).get("max_length")


def calibrated_with(model_dir: str | Path, model_id: str, settings: dict) -> Threshold | None:
    """The model's `threshold.json` where it and `fusion.json` were both calibrated for `model_id` with
    exactly `settings` (so `jobs.calibrate` has nothing to redo); None otherwise."""
    model_dir = Path(model_dir)
    try:
        threshold = Threshold.load(model_dir / THRESHOLD_FILE)
        fusion = Fusion.load(model_dir / FUSION_FILE)
    except (OSError, ValueError):  # absent, or not a record (InputError is a ValueError): recalibrate
        return None
    fresh = (
        threshold.model_id == model_id
        and threshold.calibration.get("settings") == settings
        and fusion.calibration.get("settings") == settings
    )
    return threshold if fresh else None


def check_scored_as(path: str | Path, settings: dict, max_length: int, windows: dict | None = None) -> None:
    """The calibration in `path` (its `settings`) scored as an evaluation does: at `max_length`, and
    reading long passages by `windows` (`evaluation.long_passage_settings`; empty: truncate)."""
    if settings.get("max_length", 256) != max_length:
        raise ConfigError(
            f"{path} was calibrated at max_length {settings.get('max_length', 256)}; this evaluation "
            f"scores at {max_length} (recalibrate, or pass --max-length {settings.get('max_length', 256)})"
        )
    calibrated = {k: settings[k] for k in ("long_passages", "stride") if k in settings}
    if calibrated != (windows or {}):
        raise ConfigError(
            f"{path} was calibrated reading long passages by {calibrated or 'truncate'}; this evaluation "
            f"reads them by {windows or 'truncate'} (recalibrate with jobs.calibrate --long-passages, or "
            "pass the calibration's --long-passages and --stride)"
        )


# -- the policy -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ScorePolicy:
    """The score a run writes and thresholds: sigmoid(logit), or with `fusion` the fused score of the
    logit and the recall cosine, both probabilities; `threshold` is bound to that score (`score_id`)."""

    reranker_model: str
    recall_model: str = LOGGED
    threshold: float = DEFAULT_THRESHOLD
    threshold_source: str = DEFAULT
    fusion: Fusion | None = None
    max_length: int | None = None  # tokens per pair the score is served at; None: the config's
    max_length_source: str = DEFAULT
    calibration: dict | None = field(default=None, compare=False)  # the calibration record, where one is
    calibrated_in: str | None = None  # its file

    scale = PROBABILITY  # every score the job writes is a probability of relevance

    def __post_init__(self):
        Threshold(value=self.threshold, model_id=self.score_id, scale=self.scale)  # validates the value
        if self.fusion is not None:
            self.fusion.check(model_id=self.reranker_model)
            if self.fusion.recall_model != self.recall_model:
                raise ScaleMismatchError(
                    f"fusion fitted on the cosines of {self.fusion.recall_model!r}, not {self.recall_model!r}"
                )

    @property
    def kind(self) -> str:
        """What the output's `score` holds (`schema.SCORE_KINDS`)."""
        return schema.FUSED_PROBABILITY if self.fusion is not None else schema.RERANKER_PROBABILITY

    @property
    def score_id(self) -> str:
        """What the scores are scores of: the reranker, or the fusion of it with one bi-encoder."""
        return self.fusion.score_id() if self.fusion is not None else self.reranker_model

    @property
    def settings(self) -> dict | None:
        """The settings the score was calibrated with (split, max_length, ...); None: not calibrated."""
        return None if self.calibration is None else self.calibration.get("settings", {})

    @property
    def fusion_source(self) -> str | None:
        return self.calibrated_in if self.fusion is not None else None

    def scores(self, logits, recall_scores=None) -> tuple[np.ndarray, np.ndarray]:
        """(order key, score) of one query's candidates: the (fused) logit, which orders as the score does
        without fp32 saturation ties, and the probability."""
        if self.fusion is None:
            from rerank_engine.serving.engine import sigmoid

            return logits, sigmoid(logits)
        if recall_scores is None:
            raise ConfigError("score fusion needs the recall cosines; logged candidates have none")
        return self.fusion.fused_logits(logits, recall_scores), self.fusion.scores(logits, recall_scores)

    def keep(self, scores) -> np.ndarray:
        """Which scores pass the threshold (`score >= threshold`)."""
        return np.asarray(scores) >= self.threshold

    def serve(self, config: JobConfig) -> JobConfig:
        """`config` with the calibrated max_length where the config leaves `tokenizer.max_length` unset:
        thresholds and fusion weights are fitted to one score distribution, and truncation moves it."""
        if self.max_length_source in (CONFIG, DEFAULT):
            return config
        tokenizer = config.tokenizer.model_copy(update={"max_length": int(self.max_length)})
        return config.model_copy(update={"tokenizer": tokenizer})

    def summary(self) -> dict:
        """The policy as the run summary records it."""
        return {
            "score_kind": self.kind,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "fusion": self.fusion.weights() if self.fusion is not None else None,
            "fusion_source": self.fusion_source,
            "max_length_source": self.max_length_source,
            "reranker_model": self.reranker_model,
            "recall_model": self.recall_model,
        }

    # -- resolution ---------------------------------------------------------------------------------

    @classmethod
    def for_job(cls, config: JobConfig, model_id: str, recall_model: str | None) -> ScorePolicy:
        """The batch job's policy for the reranker `model_id` exported from `config.model`, on the
        cosines of `recall_model` (the index's bi-encoder; None for logged candidates)."""
        model_dir = Path(config.model)
        fusion = _job_fusion(config, model_dir, model_id, recall_model)
        record = str(model_dir / (FUSION_FILE if fusion is not None else THRESHOLD_FILE))
        if config.threshold is not None:
            threshold, source = config.threshold, CONFIG
        elif fusion is not None:
            threshold, source = (
                (fusion.threshold, record) if fusion.threshold is not None else (DEFAULT_THRESHOLD, DEFAULT)
            )
        else:
            plain = read_threshold(model_dir, model_id)
            threshold, source = (plain.value, record) if plain is not None else (DEFAULT_THRESHOLD, DEFAULT)
        # whatever the threshold's source: the fusion weights were fitted at one length too
        calibration = calibration_record(model_dir, fusion)
        settings = None if calibration is None else calibration.get("settings", {})
        max_length, max_length_source = _served_length(config, (settings or {}).get("max_length"), record)
        _warn_long_passages_differ(config, settings, record)
        return cls(
            reranker_model=model_id,
            recall_model=recall_model or LOGGED,
            threshold=threshold,
            threshold_source=source,
            fusion=fusion,
            max_length=max_length,
            max_length_source=max_length_source,
            calibration=calibration,
            calibrated_in=record if calibration is not None else None,
        )

    @classmethod
    def for_evaluation(
        cls,
        model_dir: str | Path,
        model_id: str,
        recall_model: str,
        *,
        max_length: int,
        windows: dict | None = None,
        fused: bool = True,
    ) -> ScorePolicy | None:
        """The calibrated score an evaluation reports: with `fused`, fusion.json's (None where the model
        has none), else threshold.json's (None where none). A record of another model, another
        bi-encoder, another max_length or other `windows` is an error, not a silent row."""
        model_dir = Path(model_dir)
        if fused:
            fusion = read_fusion(model_dir, model_id)
            if fusion is None:
                return None
            path = model_dir / FUSION_FILE
            check_scored_as(path, fusion.calibration.get("settings", {}), max_length, windows)
            if fusion.recall_model != recall_model:
                raise ScaleMismatchError(
                    f"{path} was fitted on {fusion.recall_model}'s cosines, not {recall_model}'s"
                )
            threshold, calibration = fusion.threshold, fusion.calibration
        else:
            fusion, path = None, model_dir / THRESHOLD_FILE
            plain = read_threshold(model_dir, model_id)
            if plain is None:
                return None
            check_scored_as(path, plain.calibration.get("settings", {}), max_length, windows)
            threshold, calibration = plain.value, plain.calibration
        return cls(
            reranker_model=model_id,
            recall_model=recall_model,
            threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
            threshold_source=DEFAULT if threshold is None else str(path),
            fusion=fusion,
            max_length=max_length,
            max_length_source=str(path),
            calibration=calibration,
            calibrated_in=str(path),
        )


def _job_fusion(config: JobConfig, model_dir: Path, model_id: str, recall_model: str | None) -> Fusion | None:
    """The model's `fusion.json` where the job should fuse (`JobConfig.fusion`), else None.

    auto: fuse where the file exists, names this model and was fitted on this index's bi-encoder
    (`recall_model`; None for logged candidates, which carry no cosines); on: the same, but anything
    missing is an error; off: never."""
    if config.fusion == "off":
        return None
    path = model_dir / FUSION_FILE
    required = config.fusion == "on"
    if recall_model is None:
        if required:
            raise ConfigError("fusion 'on' needs recall cosines; logged candidates carry none (fusion: off)")
        return None
    fusion = read_fusion(model_dir, model_id, hint=", or set fusion: off")
    if fusion is None:
        if required:
            raise ConfigError(f"fusion 'on' but {path} does not exist (write it with jobs.calibrate)")
        return None
    if fusion.recall_model != recall_model:
        if required:
            raise ScaleMismatchError(
                f"{path} was fitted on the cosines of {fusion.recall_model!r}; the index holds "
                f"{recall_model!r}"
            )
        log.warning(
            "%s was fitted on %s; the index is %s: not fusing", path, fusion.recall_model, recall_model
        )
        return None
    return fusion


def _served_length(config: JobConfig, calibrated: int | None, source: str) -> tuple[int, str]:
    """(max_length, where it came from): the config's where it sets `tokenizer.max_length` (a warning
    where the score was calibrated, in `source`, at another), else the calibrated one, else the default."""
    explicit = "max_length" in config.tokenizer.model_fields_set
    if calibrated is None:
        return config.tokenizer.max_length, CONFIG if explicit else DEFAULT
    if not explicit:
        return int(calibrated), source
    if config.tokenizer.max_length != calibrated:
        log.warning(
            "tokenizer.max_length %d, but %s was calibrated at %d: its weights and threshold may not fit",
            config.tokenizer.max_length,
            source,
            calibrated,
        )
    return config.tokenizer.max_length, CONFIG


def _warn_long_passages_differ(config: JobConfig, calibrated: dict | None, source: str) -> None:
    """A warning where the score was calibrated (settings `calibrated`, recorded in `source`) reading long
    passages otherwise than the job will: chunk_max's best window scores higher than a truncated
    passage's first, so the threshold and fusion weights fitted on one do not fit the other."""
    if calibrated is None:
        return
    served = {"long_passages": config.tokenizer.long_passages, "stride": config.tokenizer.stride}
    fitted = {
        "long_passages": calibrated.get("long_passages", "truncate"),
        "stride": calibrated.get("stride"),
    }
    if served != fitted:
        log.warning(
            "tokenizer.long_passages %s (stride %s), but %s was calibrated with %s (stride %s): its weights "
            "and threshold may not fit (recalibrate with jobs.calibrate --long-passages)",
            served["long_passages"],
            served["stride"],
            source,
            fitted["long_passages"],
            fitted["stride"],
        )
