"""The MLflow model's code (models from code; see ``lk_segment/serving.py``).

MLflow runs this file when it loads a logged lk_segment model; the package's own source travels
with the model, so the loading process needs no lk_segment of its own. Nothing imports it.
"""

import logging

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

logger = logging.getLogger("lk_segment.serving")


class RequestError(MlflowException):
    """What the client of ``mlflow models serve`` reads: its status (400 or 500) and one line.

    MLflow's scoring server rewrites the message of an error raised in ``predict`` to begin with the
    whole input array, printed (``Failed to predict data '<array>'``): the message set here is kept.
    """

    def __init__(self, message: str, error_code: int):
        self._line = message
        super().__init__(message, error_code=error_code)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        pass  # the line given to __init__ stays the message


class CarvanaMasks(PythonModel):
    """RGB uint8 photos (B, H, W, 3) -> their 0/1 uint8 masks (B, H, W), as ``make predict`` makes them;
    one photo (H, W, 3) -> its mask (H, W)."""

    def load_context(self, context):
        from lk_segment.serving import load_predictor

        self.predictor = load_predictor(context.artifacts["weights"])

    def predict(self, context, model_input, params=None):
        from lk_segment.errors import UserError
        from lk_segment.serving import predict_masks

        try:
            return predict_masks(self.predictor, model_input)
        except UserError as exc:  # the request's fault, said in one line
            raise RequestError(str(exc), INVALID_PARAMETER_VALUE) from exc
        except Exception as exc:  # the model's: the traceback stays in the server's log
            logger.exception("lk_segment model: prediction failed")
            raise RequestError(f"the model failed to predict ({type(exc).__name__}); the server's log has the "
                               "details", INTERNAL_ERROR) from exc


mlflow.models.set_model(CarvanaMasks())
