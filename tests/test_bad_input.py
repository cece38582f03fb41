"""Bad input and the OS's refusals: one line naming the file or key, exit status 2, nothing
written where it should not be."""
import os
import socket
import stat

import numpy as np
import pytest
import torch

from conftest import REPO, run_stage as run_stage_command
from miniature_data import voc_tree
from pipeline import cli
from pipeline.cam.infer import make_cams
from pipeline.data.cam_files import cam_path, load_cam
from pipeline.data.manifest import ImageRecord, read_manifest, write_manifest
from pipeline.data.real import voc_records
from pipeline.distributed import bindable_port
from pipeline.errors import UserError
from pipeline.io import atomic_dir, atomic_path, label_png_path, read_net_folder, save_net_folder
from pipeline.nets.cam_net import save_cam_net
from pipeline.params import Distributed, MakeCam
from pipeline.stage import run_stage
from tiny_scenes import SMALL, cam_net, scene

ESCAPES = ["../../../escape_probe", "/etc/hostname", "a/b", "a\\b", "..", ""]


@pytest.mark.parametrize("image_id", ESCAPES)
def test_an_image_id_that_leaves_its_folder_is_refused(tmp_path, image_id):
    record = ImageRecord(image_id, tmp_path / "x.png", None, (1,), 8, 8)
    write_manifest(tmp_path / "train.parquet", [record])
    with pytest.raises(UserError, match=r"train.parquet: image id '.*' is not a plain file name"):
        read_manifest(tmp_path / "train.parquet")
    for helper in (label_png_path, cam_path):  # and every per-image path, whatever made the id
        with pytest.raises(UserError, match="is not a plain file name"):
            helper(tmp_path / "out", image_id)
    assert not list(tmp_path.parent.glob("escape_probe*"))


def test_a_voc_split_list_with_a_path_in_it_is_refused(tmp_path):
    root, _ = voc_tree(tmp_path)
    listing = root / "ImageSets" / "Segmentation" / "train.txt"
    listing.write_text(listing.read_text() + "../../../escape_probe\n")
    with pytest.raises(UserError, match=r"train.txt: image id '../../../escape_probe' is not a plain file name"):
        voc_records(root, "train")


def test_a_truncated_net_or_cam_file_is_one_line_and_a_damaged_cam_is_made_again(tmp_path):
    save_cam_net(tmp_path / "net", cam_net(), SMALL, ["a", "b", "c"], "baseline", [])
    weights = tmp_path / "net" / "weights.pt"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(UserError) as error:
        read_net_folder(tmp_path / "net", "no net")
    assert str(error.value).startswith(f"{tmp_path / 'net'}: unreadable net (") and "\n" not in str(error.value)
    weights.write_bytes(intact)

    label = np.zeros((16, 16), np.uint8)
    label[4:12, 4:12] = 1
    records = [scene(tmp_path, f"img{i}", label, seed=i) for i in range(2)]
    cfg = MakeCam(scales=[1.0], batch_size=2, num_workers=0)
    dist = Distributed(num_workers=1, cpus_per_worker=1, use_gpu=False, max_failures=0, storage="unused")
    assert make_cams(records, tmp_path / "net", tmp_path / "cams", cfg, dist) == 2
    damaged = cam_path(tmp_path / "cams", "img1")
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(UserError, match=r"img1.npz: unreadable CAM file \(.*\); run make_cam again"):
        load_cam(damaged)
    assert make_cams(records, tmp_path / "net", tmp_path / "cams", cfg, dist) == 1  # only the damaged one
    assert load_cam(damaged)["class_ids"].tolist() == [1]


def test_identical_weights_are_identical_files(tmp_path):
    for folder in ("a", "b"):
        save_net_folder(tmp_path / folder, cam_net(), {"kind": "baseline"})
    assert (tmp_path / "a" / "weights.pt").read_bytes() == (tmp_path / "b" / "weights.pt").read_bytes()
    assert torch.load(tmp_path / "a" / "weights.pt", weights_only=True).keys() == cam_net().state_dict().keys()


def test_written_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        import importlib

        from pipeline import io as project_io

        importlib.reload(project_io)  # the modes are read from the umask at import
        with project_io.atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with project_io.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "y").write_text("y")
    finally:
        os.umask(old)
        importlib.reload(project_io)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750
    with atomic_path(tmp_path / "g.txt") as tmp:  # the usual umask 022
        tmp.write_text("x")
    with atomic_dir(tmp_path / "e") as tmp:
        pass
    assert stat.S_IMODE((tmp_path / "g.txt").stat().st_mode) == 0o666 & ~old
    assert stat.S_IMODE((tmp_path / "e").stat().st_mode) == 0o777 & ~old


def test_an_os_refusal_in_a_stage_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the committed params.yaml

    def work(params):
        raise PermissionError(13, "Permission denied", "/data/out/weights.pt")

    with pytest.raises(SystemExit) as exited:
        run_stage(work, argv=[])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: /data/out/weights.pt: Permission denied\n"


@pytest.mark.parametrize(
    "name, args, code",
    [("prepare_clip", ["--help"], 0), ("train_cam", ["--epochs", "3"], 2), ("make_cam", [], 2), ("make_cam", ["-h"], 0)],
)
def test_a_stage_given_a_flag_runs_nothing_and_says_how_it_is_run(tmp_path, mlflow_uri, name, args, code):
    """Stages take their settings from params.yaml: a flag on the command line (even --help)
    must not start the stage, which would train and overwrite its outputs."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    result = run_stage_command(name, tmp_path, mlflow_uri, *args)
    usage = f"usage: python {REPO / 'stages' / name}.py" + (" {baseline,clims}" if name == "make_cam" else "")
    assert result.returncode == code, result.stderr
    if code == 0:
        assert result.stdout.startswith(usage) and f"DVC stage {name}" in result.stdout
    else:
        assert result.stderr.startswith(f"error: {usage} ") and result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_clims_ui_on_a_busy_port_is_one_line_and_port_0_is_a_real_port(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            cli.main(["ui", "--port", str(port)])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: 127.0.0.1:{port}: cannot listen there (")
    assert bindable_port("127.0.0.1", 0) > 0


def test_clims_ui_on_a_tracking_server_names_it_and_starts_nothing(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    cli.main(["ui"])
    assert capsys.readouterr().out == "MLflow UI: http://127.0.0.1:5999 (the tracking server's)\n"
