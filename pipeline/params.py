"""The typed schema of params.yaml, checked at the start of every stage.

params.yaml is composed from conf/ (DVC's Hydra integration); this schema is what the code
relies on. Every model forbids unknown keys and is strict about types, so a typo or a string
where a number belongs stops a stage with one line naming the key, before anything is written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import UserError

PARAMS_FILE = "params.yaml"

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------- dataset
# What the synthetic world can draw (pipeline.data.synthetic renders exactly these; a test ties the two).
ObjectKind = Literal["boat", "train", "plane", "car", "cow", "bird"]
BackgroundKind = Literal["water", "rails", "sky", "road", "grass", "trees", "sand", "wall", "snow"]


class ObjectClass(Section):
    name: ObjectKind  # the object kind, also its prompt name
    context: BackgroundKind  # the background it usually sits on


class DatasetSection(Section):
    """What every dataset has: classes (ids 1..C, in order), a prompt template, a preview."""

    prompt_template: str
    preview_count: Annotated[int, Field(ge=1, le=64)]

    @model_validator(mode="after")
    def _template(self):
        if "{}" not in self.prompt_template:
            raise ValueError("prompt_template needs a '{}' for the class name")
        return self

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]


class SyntheticDataset(DatasetSection):
    """The rendered world (pipeline.data.synthetic)."""

    name: Literal["synthetic"]
    seed: NonNegativeInt
    image_size: Annotated[int, Field(ge=32, le=512)]
    num_train: PositiveInt
    num_val: PositiveInt
    min_objects: PositiveInt
    max_objects: PositiveInt
    cooccurrence: Probability
    distractor: Probability
    plain_bodies: bool  # the parts world: only a part (head, sail, cab, ...) tells the class apart
    clutter: Probability  # probability of an unlabelled headless body in a scene
    object_scale: Annotated[float, Field(gt=0.0, le=2.8)]  # objects this many times 14-22 px (the plain world's); contexts keep their size
    classes: list[ObjectClass] = Field(min_length=2)
    backgrounds: list[BackgroundKind] = Field(min_length=2)
    background_prompts: Optional[list[str]]  # None: the background kinds' names

    @model_validator(mode="after")
    def _consistent(self):
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) is larger than max_objects ({self.max_objects})")
        missing = [c.context for c in self.classes if c.context not in self.backgrounds]
        if missing:
            raise ValueError(f"context backgrounds {missing} are not in backgrounds {list(self.backgrounds)}")
        if set(self.backgrounds) <= {c.context for c in self.classes}:
            raise ValueError("backgrounds: at least one must be nobody's context (the neutral ground)")
        return self

    @property
    def prompt_names(self) -> list[str]:
        return self.class_names

    @property
    def background_prompt_names(self) -> list[str]:
        return list(self.background_prompts or self.backgrounds)


class LabelledClass(Section):
    name: str  # as the dataset calls it (reports, per-class IoU)
    prompt: str  # as the CLIP prompts say it (the reference writes VOC's person as 'player')


class RealDataset(DatasetSection):
    """A dataset on disk in its standard layout (pipeline.data.real); nothing is downloaded.

    Three manifests come from its splits: `train_split` trains every net and gets CAMs and pseudo
    labels, `eval_split` (a subset of it) scores the CAMs and pseudo labels, `val_split` scores
    the segmentation net."""

    name: Literal["voc12", "coco14"]
    root: str  # VOCdevkit/VOC2012, or the COCO folder with images/ and masks/; relative to the repository
    train_split: str = Field(min_length=1)
    eval_split: str = Field(min_length=1)
    val_split: str = Field(min_length=1)
    classes: list[LabelledClass] = Field(min_length=2)  # class ids 1..C of the masks, in order
    # what the class prompts say of each class: its `prompt` (the improved reference's words) or
    # its `name` (the camera-ready reference's: 'diningtable', 'person')
    prompt_source: Literal["prompt", "name"] = "prompt"
    background_prompts: list[str] = Field(min_length=1)

    @property
    def prompt_names(self) -> list[str]:
        return [getattr(c, self.prompt_source) for c in self.classes]

    @property
    def background_prompt_names(self) -> list[str]:
        return list(self.background_prompts)


Dataset = Annotated[Union[SyntheticDataset, RealDataset], Field(discriminator="name")]


# --------------------------------------------------------------------------- clip
class VisionTower(Section):
    image_size: Annotated[int, Field(ge=16)]
    patch_size: PositiveInt
    width: PositiveInt
    layers: PositiveInt
    head_width: PositiveInt

    @model_validator(mode="after")
    def _divisible(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.head_width:
            raise ValueError(f"width {self.width} is not a multiple of head_width {self.head_width}")
        return self


class TextTower(Section):
    context_length: Annotated[int, Field(ge=8)]
    width: PositiveInt
    heads: PositiveInt
    layers: PositiveInt


class TinyClipArchitecture(Section):
    embed_dim: PositiveInt
    vision: VisionTower
    text: TextTower


class TinyClipTraining(Section):
    seed: NonNegativeInt
    steps: NonNegativeInt  # 0 keeps the random initialisation (a plumbing check)
    batch_size: PositiveInt
    lr: PositiveFloat
    weight_decay: Annotated[float, Field(ge=0.0)]
    warmup_steps: NonNegativeInt
    pool_size: PositiveInt  # scenes rendered once and viewed many ways
    cooccurrence: Probability  # how often the CLIP's own renders show the context
    eval_scenes: PositiveInt  # held-out renders for the zero-shot report
    part_views: Probability  # share of views showing a part alone or a body without its part
    part_is_object: bool = False  # a view showing an object's distinctive part counts as showing the object
    clutter: Probability | None = None  # share of the CLIP's renders with an unlabelled headless body (None: the dataset's)
    # An object's visible share below which it counts as absent and from which as fully there.
    object_ramp: list[Probability] = Field(default=[0.2, 0.7], min_length=2, max_length=2)
    # Weight of a pull of every absent object's cosine down to 0, wherever it is absent (its
    # context, the ground, a hole): the sigmoid objective stops pushing at about 0.2.
    absent_weight: Annotated[float, Field(ge=0.0)] = 0.0
    # How much an object's target falls as the rest of the view fills it: times 1 - purity * (the
    # share of the view's visible content that is something else). 0: a view's clutter is free.
    purity: Probability = 0.0

    @model_validator(mode="after")
    def _ramp_rises(self):
        if not self.object_ramp[0] < self.object_ramp[1]:
            raise ValueError(f"object_ramp {self.object_ramp}: the first share must be below the second")
        return self


class TinyClip(Section):
    """A small open_clip model trained here on renders of the synthetic world."""

    source: Literal["tiny"]
    model_name: str
    architecture: TinyClipArchitecture
    train: TinyClipTraining
    # Take over the CLIP shipped with the code (pipeline/clip/shipped.py) where it was trained
    # from exactly these settings, as a real run takes a downloaded CLIP; false: train it here.
    shipped: bool = True


class PretrainedClip(Section):
    """An open_clip architecture with weights from a local file (nothing is downloaded)."""

    source: Literal["pretrained"]
    model_name: str  # an open_clip architecture, e.g. ViT-B-32
    weights: str  # path to the open_clip checkpoint file
    eval_scenes: PositiveInt  # zero-shot report: held-out renders, or the first images of dataset.eval_split


Clip = Annotated[Union[TinyClip, PretrainedClip], Field(discriminator="source")]


# --------------------------------------------------------------------------- CAM networks
Stride = Literal[1, 2]


class BackboneSection(Section):
    """The CAM nets' ResNet: a narrow one of BasicBlocks (trained from scratch) or a torchvision one."""

    name: Literal["small_resnet", "resnet18", "resnet34", "resnet50", "resnet101"]
    strides: list[Stride] = Field(min_length=4, max_length=4)  # conv1, layer2, layer3, layer4
    widths: Optional[list[PositiveInt]]  # small_resnet only: channels of layer1..layer4
    blocks: Optional[list[NonNegativeInt]]  # small_resnet only: blocks per layer (0: the layer is left out)
    weights: Optional[str]  # torchvision ResNets: a local ImageNet state dict (nothing is downloaded)

    @model_validator(mode="after")
    def _small_resnet_shape(self):
        if self.name == "small_resnet":
            for key in ("widths", "blocks"):
                value = getattr(self, key)
                if value is None or len(value) != 4:
                    raise ValueError(f"{key}: small_resnet needs 4 values (one per layer)")
            if self.weights:
                raise ValueError("weights: small_resnet is trained from scratch; set weights to null")
            if not any(self.blocks):
                raise ValueError("blocks: small_resnet needs at least one block")
            strided_empty = [f"layer{n}" for n, b, s in zip((2, 3, 4), self.blocks[1:], self.strides[1:]) if b == 0 and s != 1]
            if strided_empty:
                raise ValueError(f"blocks: {strided_empty[0]} has no blocks to carry its stride (set its stride to 1)")
        return self


class Distributed(Section):
    """Ray Train workers for training, Ray tasks for per-image stages. RAY_ADDRESS joins a cluster."""

    num_workers: PositiveInt
    cpus_per_worker: PositiveInt  # torch threads of each worker (and its Ray CPU reservation)
    use_gpu: bool
    max_failures: NonNegativeInt  # worker failures a training run recovers from (from its last checkpoint)
    storage: str  # the checkpoints (pipeline.storage): a folder, relative ones from the repo, or a URI (s3://...)
    # bf16: autocast + channels_last for training and inference (pipeline.precision); fp32 as written
    precision: Literal["fp32", "bf16"] = "fp32"
    # where a training stage runs its epochs: ray (Ray Train workers), local (the stage's own
    # process, one worker; checkpoints and resumption in `storage` as Ray's; the same net bit for
    # bit) or auto: local for one worker outside a cluster, where Ray Train's start (10-30 s a fit
    # on 2 CPUs: benchmarks/train_launch.py) buys nothing, else ray
    launcher: Literal["auto", "ray", "local"] = "auto"
    # training keeps only the backbone's block outputs and the frozen CLIP's layer inputs and
    # recomputes the rest in the backward pass: the same gradients, much less memory, about a
    # third more forward compute (benchmarks/real_scale.py measures both)
    activation_checkpointing: bool = False

    @model_validator(mode="after")
    def _one_local_worker(self):
        if self.launcher == "local" and self.num_workers != 1:
            raise ValueError(f"launcher local trains in one process: num_workers must be 1, not {self.num_workers}")
        return self

    def trains_in_process(self) -> bool:
        """Whether training runs in the stage's own process: `local`, or `auto` with one worker and
        no cluster to join ($RAY_ADDRESS)."""
        if self.launcher == "auto":
            return self.num_workers == 1 and not os.environ.get("RAY_ADDRESS")
        return self.launcher == "local"


class Training(Section):
    """What every trained stage (pipeline.train_loop) reads: SGD, schedule, augmentation, loader."""

    seed: NonNegativeInt
    epochs: PositiveInt
    batch_size: PositiveInt  # over all workers
    lr: PositiveFloat  # backbone
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)]
    weight_decay: Annotated[float, Field(ge=0.0)]
    schedule: Literal["cosine", "poly"]
    crop_size: Annotated[int, Field(ge=16)]
    long_side: list[PositiveInt] = Field(min_length=2, max_length=2)  # random rescale range (pixels)
    # a crop's pixels outside the image: black, or ImageNet's mean colour (0 once normalised: the reference)
    crop_fill: Literal["black", "mean"] = "black"
    loader_workers: NonNegativeInt  # DataLoader processes per training worker

    @model_validator(mode="after")
    def _ranges(self):
        if self.long_side[0] > self.long_side[1]:
            raise ValueError(f"long_side: {self.long_side[0]} is larger than {self.long_side[1]}")
        return self


# How the backbone's BatchNorm layers normalise while a CAM net trains (pipeline.nets.cam_net):
# "batch": ordinary BatchNorm (the reference's CLIMS net); "running": running statistics and a
# fixed affine everywhere (IRN's FixedBatchNorm: the reference's baseline); "running_stem": only
# the stem's BatchNorm fixed.
BatchNormStats = Literal["batch", "running", "running_stem"]


class Optimisation(Training):
    head_lr_scale: PositiveFloat  # the classifier's lr = lr x this
    frozen_stem: bool  # conv1/bn1 weights fixed (the reference's choice with ImageNet weights)
    batchnorm_stats: BatchNormStats


class TrainCam(Optimisation):
    """The baseline CAM net: GAP + multilabel soft-margin loss."""


class TrainClims(Optimisation):
    """The CLIMS net, initialised from the baseline's weights."""

    init_bias: Optional[float]  # a head bias starting here, shifting where P starts; null: no bias (the reference)
    init_head_scale: PositiveFloat  # the baseline's head weights times this at the start: P = sigmoid(scale x logits + bias); 1: the reference


class LossWeights(Section):
    otm: Annotated[float, Field(ge=0.0)]
    btm: Annotated[float, Field(ge=0.0)]
    cbs: Annotated[float, Field(ge=0.0)]
    reg: Annotated[float, Field(ge=0.0)]


class ClimsLossSection(Section):
    """CLIMS's four losses; see pipeline.cam.losses for both variants."""

    variant: Literal["improved", "camera_ready"]
    # what the losses take the log of: the cosine (the reference, for OpenAI CLIP whose cosines
    # stay positive) or the CLIP's own sigmoid(scale * cosine + bias) (a sigmoid-trained CLIP)
    score: Literal["cosine", "clip_sigmoid"]
    weights: LossWeights
    # improved: CBS threshold; 'auto' derives it from the CLIP's own cosines (metrics/clip.json)
    tau: Union[Annotated[float, Field(ge=-1.0, le=1.0)], Literal["auto"]]
    # camera_ready: each class's own background prompts (names from dataset.background_prompts);
    # its groups per dataset are conf/clims_vocab/camera_ready_<dataset>.yaml
    class_backgrounds: Optional[dict[str, list[str]]]
    # a class's pair weight in L_OTM and L_BTM (others 1); the camera-ready VOC group: 3 for
    # sofa, dining table and chair
    class_weights: Optional[dict[str, Annotated[float, Field(gt=0.0)]]] = None
    # what CLIP sees (pipeline.cam.losses): "pixels": P times the image in [0, 1] (a masked pixel
    # is black), then CLIP's own normalisation; "imagenet": the improved reference's, P times the
    # ImageNet-normalised image at CLIP's size (a masked pixel is ImageNet's mean colour); "clip":
    # the camera-ready reference's, the same in CLIP's normalisation
    clip_input: Literal["pixels", "imagenet", "clip"] = "pixels"

    @model_validator(mode="after")
    def _variant_needs(self):
        if self.variant == "camera_ready" and not self.class_backgrounds:
            raise ValueError("class_backgrounds: the camera_ready variant needs each class's background prompts "
                             "(conf/clims_vocab/camera_ready_<dataset>.yaml; the reference gives them for VOC only)")
        return self


class MakeCam(Section):
    scales: list[PositiveFloat] = Field(min_length=1)
    batch_size: PositiveInt  # images per forward (same-size images only)
    num_workers: NonNegativeInt  # Ray tasks sharing the images; 0 runs in this process


class ThresholdRange(Section):
    start: Probability
    stop: Probability
    step: Annotated[float, Field(gt=0.0, le=1.0)]


class EvalCam(Section):
    thresholds: ThresholdRange  # background thresholds; each net is scored at its best one
    # ... and at this one, the papers' CAM figure (IRN's cam_eval_thres; CLIMS reports 0.15)
    fixed_threshold: Probability = 0.15
    overlays: Annotated[int, Field(ge=0, le=64)]  # CAM overlays sent to MLflow

    @model_validator(mode="after")
    def _fixed_on_the_sweep(self):
        r = self.thresholds
        steps = (self.fixed_threshold - r.start) / r.step
        if not (r.start - 1e-9 <= self.fixed_threshold <= r.stop + 1e-9 and abs(steps - round(steps)) < 1e-6):
            raise ValueError(f"fixed_threshold: {self.fixed_threshold} is not one of the swept thresholds "
                             f"({r.start} to {r.stop} by {r.step})")
        return self


# --------------------------------------------------------------------------- IRN refinement
class CrfSection(Section):
    """Dense CRF (pipeline.ops.crf): the reference's kernels, fully connected or in a window."""

    kernel: Literal["lattice", "window"]  # every pixel pair (the reference's), or a window
    iterations: NonNegativeInt
    gaussian_sxy: PositiveFloat
    gaussian_compat: Annotated[float, Field(ge=0.0)]
    bilateral_sxy: PositiveFloat
    bilateral_srgb: PositiveFloat
    bilateral_compat: Annotated[float, Field(ge=0.0)]
    gt_prob: Annotated[float, Field(gt=0.0, lt=1.0)]  # unary: probability of the given label
    window: PositiveInt  # kernel window: half-width of the message window, in message pixels
    downsample: PositiveInt  # kernel window: message resolution = image / this


class MakeIrLabel(Section):
    cams: Literal["baseline", "clims"]  # whose CAMs are refined
    fg_threshold: Probability  # background score for confident foreground
    bg_threshold: Probability  # background score for confident background
    batch_size: PositiveInt
    num_workers: NonNegativeInt

    @model_validator(mode="after")
    def _order(self):
        if self.bg_threshold > self.fg_threshold:
            raise ValueError(f"bg_threshold ({self.bg_threshold}) is above fg_threshold ({self.fg_threshold})")
        return self


FeaturesFrom = Literal["baseline", "clims", "backbone"]  # a CAM net's backbone, or `backbone` with its weights file


# Which grid cells a pixel pair's path covers (pipeline.irn.affinity.path_points): IRN's
# two-cell-thick path ("reference"), or the cells the segment touches ("touching").
PathRule = Literal["reference", "touching"]


class TrainIrn(Training):
    """IRN's boundary branch on a frozen backbone, from the IR labels' pixel pairs."""

    features_from: FeaturesFrom
    radius: Annotated[int, Field(ge=2)]  # pixel pairs within this distance on the stride-4 grid
    paths: PathRule = "touching"  # "reference" also trains only sources whose whole neighbourhood is in the crop
    # rescale each image by a uniform factor of its own size in this range instead of to a long side
    # in long_side (IRN's training: 0.5-1.5)
    scale_range: Optional[list[PositiveFloat]] = Field(default=None, min_length=2, max_length=2)
    # the IR label's pixel that a stride-4 cell takes: 4i ("nearest") or 4i+2 ("nearest-exact": PIL's, IRN's);
    # "pure": a cell takes a label only where all its pixels hold it, else 255 (no pair)
    grid_sampling: Literal["nearest", "nearest-exact", "pure"] = "nearest"

    @model_validator(mode="after")
    def _scale_range(self):
        if self.scale_range and self.scale_range[0] > self.scale_range[1]:
            raise ValueError(f"scale_range: {self.scale_range[0]} is larger than {self.scale_range[1]}")
        return self
    side_channels: Annotated[int, Field(ge=4, multiple_of=4)]  # GroupNorm(4) per side output
    side_upsampling: Literal["resize", "reference"] = "resize"  # pipeline.nets.boundary


class MakeSemSeg(Section):
    """Random walk of the CAMs over the boundary net's affinities (pipeline.irn.random_walk)."""

    walk: bool = True  # false: the CAMs go to the background score and the CRF unwalked (the ablation's "no walk")
    radius: Annotated[int, Field(ge=2)]
    paths: PathRule = "touching"
    beta: PositiveFloat
    exp_times: Annotated[int, Field(ge=0, le=12)]  # 2^exp_times steps
    damp_boundary: bool  # start from CAM x (1 - boundary), as IRN does
    bg_threshold: Probability  # background score after the walk
    crf: bool  # refine the walked labels with the dense CRF (section crf) on the image
    batch_size: PositiveInt
    num_workers: NonNegativeInt


class EvalSemSeg(Section):
    overlays: Annotated[int, Field(ge=0, le=64)]


# --------------------------------------------------------------------------- segmentation
class TrainSeg(Training):
    """DeepLabV3 trained on the pseudo labels (pipeline.seg)."""

    features_from: FeaturesFrom  # the starting backbone
    head_lr_scale: PositiveFloat
    loss: Literal["ce", "balanced"]  # balanced: mean background CE + mean foreground CE (the reference)
    atrous_rates: list[PositiveInt] = Field(min_length=1)
    head_width: Annotated[int, Field(ge=8)]


class EvalSeg(Section):
    scales: list[PositiveFloat] = Field(min_length=1)  # each with its mirror
    crf: bool  # refine the predictions with the dense CRF (section crf)
    batch_size: PositiveInt
    overlays: Annotated[int, Field(ge=0, le=64)]


# --------------------------------------------------------------------------- loss-weight sweeps
class SearchDimension(Section):
    """One searched value: sampled from [low, high] (log-uniform if `log`), or one of `values`
    (every one of them under grid search)."""

    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    values: Optional[list[float]] = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self):
        if self.values is None and (self.low is None or self.high is None):
            raise ValueError("give low and high, or values")
        if self.values is not None and (self.low is not None or self.high is not None):
            raise ValueError("give low and high, or values, not both")
        if self.values is None and not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and (self.values is not None or self.low <= 0):
            raise ValueError("log needs a range with low > 0")
        return self


class SweepSpace(Section):
    """The CLIMS loss weights and the CBS threshold tau (clims_loss.weights.*, clims_loss.tau)."""

    otm: SearchDimension
    btm: SearchDimension
    cbs: SearchDimension
    reg: SearchDimension
    tau: SearchDimension


class SweepSection(Section):
    """`clims sweep`: Ray Tune trials of a short CLIMS training, scored by CAM mIoU on held
    training images; ASHA stops the weak ones early."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # a folder under sweeps/; the same name resumes
    search: Literal["random", "grid", "optuna"]
    num_samples: PositiveInt  # trials (grid: repeats of the whole grid)
    seed: NonNegativeInt
    epochs: PositiveInt  # CLIMS epochs per trial (ASHA's max_t)
    grace_period: PositiveInt  # epochs every trial gets before ASHA may stop it
    reduction_factor: Annotated[float, Field(gt=1.0)]
    train_images: PositiveInt  # the first N training images train each trial
    held_images: PositiveInt  # the last N training images (never trained on) score it
    scales: list[PositiveFloat] = Field(min_length=1)  # CAM inference scales of the score
    overlays: Annotated[int, Field(ge=0, le=16)]  # CAM overlays per trial in MLflow
    space: SweepSpace

    @model_validator(mode="after")
    def _consistent(self):
        if self.grace_period > self.epochs:
            raise ValueError(f"grace_period: {self.grace_period} is more than epochs={self.epochs}")
        if self.search == "grid":
            ranged = [name for name, dim in self.space if dim.values is None]
            if ranged:
                raise ValueError(f"search: grid needs values (not low/high) for {ranged}")
        return self


# --------------------------------------------------------------------------- tracking
class Tracking(Section):
    uri: Optional[str]  # None: sqlite:///<repo>/mlflow.db, or $MLFLOW_TRACKING_URI when set
    experiment: str


class Params(Section):
    dataset: Dataset
    clip: Clip
    backbone: BackboneSection
    distributed: Distributed
    train_cam: TrainCam
    train_clims: TrainClims
    clims_loss: ClimsLossSection
    make_cam: MakeCam
    eval_cam: EvalCam
    crf: CrfSection
    make_ir_label: MakeIrLabel
    train_irn: TrainIrn
    make_sem_seg: MakeSemSeg
    eval_sem_seg: EvalSemSeg
    train_seg: TrainSeg
    eval_seg: EvalSeg
    sweep: SweepSection
    tracking: Tracking

    @model_validator(mode="after")
    def _cross_checks(self):
        for section in ("train_cam", "train_clims", "train_irn", "train_seg"):
            batch = getattr(self, section).batch_size
            if batch % self.distributed.num_workers:
                raise ValueError(f"{section}.batch_size: {batch} does not split over distributed.num_workers={self.distributed.num_workers}")
        for section in ("train_irn", "train_seg"):
            if getattr(self, section).features_from == "backbone" and not self.backbone.weights:
                raise ValueError(f"{section}.features_from: 'backbone' needs backbone.weights (ImageNet weights); "
                                 "use a CAM net's (baseline or clims) otherwise")
        if self.dataset.name != "synthetic":
            if self.clip.source == "tiny" and self.clip.train.steps:
                raise ValueError(f"clip.train.steps: the tiny CLIP learns from renders of the synthetic world; with dataset "
                                 f"{self.dataset.name} use a pretrained clip group (vit_b32, vit_b16, rn50x4), or steps 0 "
                                 "for a plumbing check (check=plumbing)")
            if self.clims_loss.tau == "auto":
                raise ValueError(f"clims_loss.tau: 'auto' reads the synthetic world's CLIP report; give dataset "
                                 f"{self.dataset.name} a number (the reference: 0.26 on VOC, 0.285 on COCO)")
        unknown = [name for name in self.clims_loss.class_weights or {} if name not in self.dataset.class_names]
        if unknown:
            raise ValueError(f"clims_loss.class_weights: {unknown} not classes of the dataset {self.dataset.class_names}")
        backgrounds = self.clims_loss.class_backgrounds or {}
        for name, prompts in backgrounds.items():
            if name not in self.dataset.class_names:
                raise ValueError(f"clims_loss.class_backgrounds.{name}: not a class of the dataset {self.dataset.class_names}")
            unknown = [p for p in prompts if p not in self.dataset.background_prompt_names]
            if unknown:
                raise ValueError(f"clims_loss.class_backgrounds.{name}: {unknown} not in the background prompts {self.dataset.background_prompt_names}")
        return self


# --------------------------------------------------------------------------- loading
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}


def _key_path(raw, loc: tuple) -> str:
    """The error's location as keys of the file: drops pydantic's union tags and validator names."""
    keys, node = [], raw
    for n, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif n < len(loc) - 1:  # a tag such as 'tiny' in clip.tiny.train.lr
            continue
        keys.append(f"[{part}]" if isinstance(part, int) else str(part))
    return ".".join(keys).replace(".[", "[")


def _describe(error: dict, raw) -> str:
    location = _key_path(raw, error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{location}: unknown key"
    if kind == "missing":
        return f"{location}: missing key"
    if kind == "union_tag_invalid":
        return f"{location}: {error['msg']}"
    if _EXPECTED.get(kind):
        return f"{location}: expected {_EXPECTED[kind]}, got {error['input']!r}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{location}: {message}" if location else message


def validate(raw: dict, source: str = PARAMS_FILE) -> Params:
    """Check raw params against the schema; the first problem becomes one UserError line."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"{source}: {_describe(errors[0], raw)}{more}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such params file (run from the project root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where} ({problem})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    return validate(raw, str(path))
