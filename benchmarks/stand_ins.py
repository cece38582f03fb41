"""Stand-ins for real weights and data, made locally (nothing is downloaded): the files the voc12
group reads, with random weights, and a VOCdevkit tree of the synthetic world rendered at VOC's
image sizes. What they cost to run is what the real ones cost; every mIoU on them is meaningless.

    python benchmarks/stand_ins.py OUT [--images 48] [--clips ViT-B-32-quickgelu ...]

writes OUT/weights/resnet50-imagenet.pth, OUT/weights/clip/<name>.pt and OUT/VOCdevkit/VOC2012,
and prints the `-S` overrides that point the voc12 group at them. Never written over real
weights: OUT is a folder of its own.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pipeline.config import compose  # noqa: E402
from pipeline.data.prepare import world_spec  # noqa: E402
from pipeline.data.synthetic import render_scene, scene_rng  # noqa: E402
from pipeline.io import save_label_png  # noqa: E402
from pipeline.params import validate  # noqa: E402

# the synthetic world's object kinds as VOC class ids
VOC_IDS = {"plane": 1, "bird": 3, "boat": 4, "car": 7, "cow": 10, "train": 19}
# the open_clip architectures of conf/clip and their files there
CLIP_FILES = {"ViT-B-32-quickgelu": "ViT-B-32-openai.pt", "ViT-B-16-quickgelu": "ViT-B-16-openai.pt",
              "RN50x4-quickgelu": "RN50x4-openai.pt"}
VOC_LONG_SIDE, VOC_SHORT_SIDES = 500, (333, 375, 375, 375, 400, 500)  # VOC's most common sizes


def write_weights(out: Path, clips: list[str]) -> dict[str, Path]:
    """A torchvision ResNet-50 state dict and open_clip checkpoints, all randomly initialised."""
    import open_clip
    import torchvision

    torch.manual_seed(0)
    files = {"resnet50": out / "weights" / "resnet50-imagenet.pth"}
    files["resnet50"].parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), files["resnet50"])
    for name in clips:
        files[name] = out / "weights" / "clip" / CLIP_FILES[name]
        files[name].parent.mkdir(parents=True, exist_ok=True)
        torch.save(open_clip.create_model(name, pretrained=None).state_dict(), files[name])
    return files


def write_voc_tree(out: Path, images: int, seed: int = 0) -> Path:
    """OUT/VOCdevkit/VOC2012: `images` scenes of 500 x 333..500 pixels (landscape and portrait),
    masks with VOC's ids and palette; three quarters in train_aug (SegmentationClassAug), a third
    of those also in train, the last quarter in val (SegmentationClass for train and val)."""
    dataset = validate(compose([f"dataset.image_size={VOC_LONG_SIDE}"], REPO / "conf")).dataset
    spec = world_spec(dataset)
    ids = np.zeros(256, np.uint8)
    for class_id, name in enumerate(dataset.class_names, start=1):
        ids[class_id] = VOC_IDS[name]
    root = out / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    names = [f"2007_{i:06d}" for i in range(images)]
    n_train = images * 3 // 4
    for i, name in enumerate(names):
        rng = scene_rng(seed, "voc", i)
        scene = render_scene(spec, rng)
        short = VOC_SHORT_SIDES[i % len(VOC_SHORT_SIDES)]
        top = int(rng.integers(0, VOC_LONG_SIDE - short + 1))
        cut = (slice(top, top + short), slice(None)) if i % 4 else (slice(None), slice(top, top + short))  # 1 in 4 portrait
        Image.fromarray(scene.image[cut]).save(root / "JPEGImages" / f"{name}.jpg", quality=90)
        label = ids[scene.label[cut]]
        folders = ["SegmentationClassAug"] if i < n_train else []
        folders += ["SegmentationClass"] if i < n_train // 3 or i >= n_train else []
        for folder in folders:
            save_label_png(root / folder / f"{name}.png", label)
    lists = {"train_aug": names[:n_train], "train": names[: n_train // 3], "val": names[n_train:]}
    for split, listed in lists.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(listed) + "\n")
    return root


def overrides(files: dict[str, Path], root: Path, clip: str = "ViT-B-32-quickgelu") -> list[str]:
    """The `-S` settings that run the voc12 group on the stand-ins."""
    group = {"ViT-B-32-quickgelu": "vit_b32", "ViT-B-16-quickgelu": "vit_b16", "RN50x4-quickgelu": "rn50x4"}[clip]
    return ["dataset=voc12", f"dataset.root={root}", f"clip={group}", f"clip.weights={files[clip]}",
            f"backbone.weights={files['resnet50']}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--clips", nargs="+", default=["ViT-B-32-quickgelu"], choices=list(CLIP_FILES))
    args = parser.parse_args()
    files = write_weights(args.out.resolve(), args.clips)
    root = write_voc_tree(args.out.resolve(), args.images)
    print(" ".join(f"-S {o}" for o in overrides(files, root, args.clips[0])))


if __name__ == "__main__":
    main()
