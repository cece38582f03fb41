"""DVC stage make_cam (baseline or clims): multi-scale CAMs of every training image."""
from pipeline import layout, tracking
from pipeline.cam.infer import make_cams
from pipeline.data.manifest import read_manifest
from pipeline.stage import run_stage


def main(params, kind: str):
    with tracking.stage_run(f"make_cam_{kind}", params, sections=("make_cam", "distributed")) as run:
        records = read_manifest(layout.manifest_path(layout.TRAIN))
        written = make_cams(records, layout.net_dir(kind), layout.cams_dir(kind), params.make_cam, params.distributed)
        run.log_metrics({"images": len(records), "written": written})
        print(f"make_cam {kind}: {written} CAMs written, {len(records) - written} already there")


if __name__ == "__main__":
    run_stage(main, choices=layout.CAM_NETS)
