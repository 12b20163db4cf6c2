"""Freezable modules: the NEST targets (quantizer) and the mask vector are fixed random tensors, never trained."""

from torch import nn


class FreezableModule(nn.Module):
    """`freeze()` as NeMo's NeuralModule has it: no gradients, and an eval mode that `model.train()` leaves alone."""

    _frozen = False

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad = False
        self._frozen = True
        self.eval()

    def unfreeze(self) -> None:
        for p in self.parameters():
            p.requires_grad = True
        self._frozen = False
        self.train()

    def train(self, mode: bool = True):
        return super().train(mode and not self._frozen)
