"""Per-epoch metrics, the one record the trainer hands out. No torch import."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float  # training plus validation, wall clock
    images_per_s: float  # training images per second of training time

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"epoch {self.epoch:3d}  train loss {self.train_loss:.4f} acc {self.train_acc:.4f}  "
            f"val loss {self.val_loss:.4f} acc {self.val_acc:.4f}  lr {self.lr:.2e}  "
            f"{self.seconds:.1f}s  {self.images_per_s:,.0f} img/s"
        )
