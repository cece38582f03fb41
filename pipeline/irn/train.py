"""Training IRN's boundary branch from IR labels, on Ray Train (pipeline.train_loop).

Each crop's IR label is taken to the stride-4 grid (nearest); every pixel pair within
`radius` on the grid teaches the boundary map: pairs with the same label should have affinity
1 (no boundary on the path between them), pairs with different labels affinity 0.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.data.cam_files import CAM_STRIDE, stride_size
from pipeline.data.manifest import read_manifest
from pipeline.data.training_sets import LabelMapTrainSet
from pipeline.irn.affinity import affinity_loss, forward_offsets, pair_labels, path_affinities
from pipeline.metrics import IGNORE
from pipeline.nets.boundary import BoundaryNet, save_boundary_net
from pipeline.nets.cam_net import backbone_from
from pipeline.params import Params, PathRule
from pipeline.train_loop import Setup, TrainJob, fit_on_label_maps, worker_loop


def pure_cells(label: torch.Tensor) -> torch.Tensor:
    """(H, W) label map -> the stride-4 grid, a cell labelled only where all its pixels agree
    (255 elsewhere, and where the map ends inside the cell): no pair of the boundary loss then
    starts or ends in a cell that straddles an edge."""
    height, width = stride_size(*label.shape)
    padded = F.pad(label, (0, width * CAM_STRIDE - label.shape[1], 0, height * CAM_STRIDE - label.shape[0]), value=IGNORE)
    cells = padded.reshape(height, CAM_STRIDE, width, CAM_STRIDE).permute(0, 2, 1, 3).reshape(height, width, -1)
    first = cells[..., 0]
    return torch.where((cells == first[..., None]).all(-1), first, torch.full_like(first, IGNORE))


class IrnTrainSet(LabelMapTrainSet):
    """The IR label taken to the stride-4 grid, where the boundary net works: `grid_sampling`
    "nearest" reads pixel 4i of cell i, "nearest-exact" pixel 4i+2 (PIL's nearest, as IRN),
    "pure" keeps only cells whose pixels agree (pure_cells)."""

    def __init__(self, *args, grid_sampling: str = "nearest", **kwargs):
        super().__init__(*args, **kwargs)
        self.grid_sampling = grid_sampling

    def __getitem__(self, index: int):
        image, label = super().__getitem__(index)
        if self.grid_sampling == "pure":
            return image, pure_cells(label.long())
        grid = F.interpolate(label[None, None].float(), size=stride_size(*label.shape), mode=self.grid_sampling)[0, 0]
        return image, grid.long()


def boundary_step(net: BoundaryNet, images: torch.Tensor, grid_labels: torch.Tensor, offsets: list[tuple[int, int]],
                  paths: PathRule = "touching") -> dict:
    """IRN's affinity loss on a = 1 - max boundary along each pair's path; with the reference's
    paths, only from sources whose whole neighbourhood lies in the crop, as IRN trains."""
    boundary = torch.sigmoid(net(images)[:, 0].float())
    margin = max(abs(d) for offset in offsets for d in offset) if paths == "reference" else 0
    terms = affinity_loss(path_affinities(boundary, offsets, paths), pair_labels(grid_labels, offsets, margin))
    terms["boundary_mean"] = boundary.detach().mean()
    return terms


def irn_setup(job: TrainJob, device) -> Setup:
    cfg = job.params.train_irn
    net = BoundaryNet(backbone_from(job.params.backbone, job.init_net), cfg.side_channels, cfg.side_upsampling).to(device)
    optimizer = torch.optim.SGD(net.trainable_parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    dataset = IrnTrainSet(read_manifest(job.manifest), job.labels, cfg.crop_size, tuple(cfg.long_side),
                          tuple(cfg.scale_range) if cfg.scale_range else None, cfg.crop_fill, grid_sampling=cfg.grid_sampling)
    return Setup(net, partial(boundary_step, offsets=forward_offsets(cfg.radius), paths=cfg.paths), optimizer, dataset)


def irn_worker(config: dict) -> None:
    worker_loop(config, irn_setup)


def train_irn(params: Params, manifest: Path, ir_labels: Path, out: Path, init_net: Path | None = None,
              name: str | None = None) -> list[dict]:
    """Train the boundary net on Ray Train and export it into `out`; returns the per-epoch history."""
    cfg = params.train_irn
    state = fit_on_label_maps(irn_worker, params, "train_irn", "make_ir_label", manifest, ir_labels, init_net, name)
    net = BoundaryNet(backbone_from(params.backbone, init_net), cfg.side_channels, cfg.side_upsampling)
    net.load_state_dict(state["model"])
    save_boundary_net(out, net, params.backbone, cfg.side_channels, state["history"])
    return state["history"]
