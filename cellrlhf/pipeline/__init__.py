"""The whole pipeline as one file: stages, resumable runs and the evaluation report."""

from cellrlhf.pipeline.spec import PipelineSpec, StageSpec, load_pipeline

__all__ = ["PipelineSpec", "StageSpec", "load_pipeline"]
