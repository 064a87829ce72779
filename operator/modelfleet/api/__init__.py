"""The resources' API: pydantic models that are the single source of truth for the CRDs."""

from modelfleet.api.common import API_VERSION, GROUP, VERSION
from modelfleet.api.inference import InferenceServiceSpec, InferenceServiceStatus
from modelfleet.api.training import TrainingJobSpec, TrainingJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "InferenceServiceSpec",
    "InferenceServiceStatus",
    "TrainingJobSpec",
    "TrainingJobStatus",
]
