"""The MLflow model's code (models from code; see ``lk_segment/serving.py``).

MLflow runs this file when it loads a logged lk_segment model; the package's own source travels
with the model, so the loading process needs no lk_segment of its own. Nothing imports it.
"""

import mlflow
from mlflow.pyfunc import PythonModel


class CarvanaMasks(PythonModel):
    """RGB uint8 photos (B, H, W, 3) -> their 0/1 uint8 masks (B, H, W), as ``make predict`` makes them."""

    def load_context(self, context):
        from lk_segment.serving import load_predictor

        self.predictor = load_predictor(context.artifacts["weights"])

    def predict(self, context, model_input, params=None):
        from lk_segment.serving import predict_masks

        return predict_masks(self.predictor, model_input)


mlflow.models.set_model(CarvanaMasks())
