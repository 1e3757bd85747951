"""Share models and datasets on the Hugging Face Hub (``cellrlhf push``) and load them back."""

from cellrlhf.hub.push import push_dataset, push_model
from cellrlhf.hub.upload_plan import UploadPlan, plan_dataset_upload, plan_model_upload
from cellrlhf.sft.model_files import UnsafeModelError, resolve_model_dir

__all__ = [
    "UnsafeModelError",
    "UploadPlan",
    "plan_dataset_upload",
    "plan_model_upload",
    "push_dataset",
    "push_model",
    "resolve_model_dir",
]
