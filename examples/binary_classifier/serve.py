"""The seed classifier as a service written by hand (deploy from code):

    kaon deploy create classifier --path examples/binary_classifier --service serve:Classifier

A model trained by `train.py` as a Kaon job needs no code at all
(`kaon deploy create classifier --from-job JOB`); this file shows what a custom service
looks like: load once in `setup`, answer typed requests in a handler.
"""

import os

import torch
from model import BinaryClassifier

import kaon


class Classifier(kaon.Service):
    def setup(self) -> None:
        folder = os.environ.get("MODEL_DIR")  # a kaon.train checkpoint folder, if given
        if folder:
            from kaon.train import load_model

            self.model = load_model(folder)
        else:
            self.model = BinaryClassifier()  # untrained weights: fine for a smoke test
        self.model.eval()
        torch.set_num_threads(1)

    @kaon.handler
    def predict(self, x: list[list[float]]) -> list[float]:
        """Probability of class 1 for each input row."""
        with torch.no_grad():
            return self.model(torch.tensor(x)).squeeze(1).tolist()
