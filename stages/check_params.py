"""DVC stage check_params: params.yaml against the schema and the files it names, before every
other stage. DVC removes a stage's outputs before it runs the stage, so a bad value that only
the stage found would already have cost them; this stage fails first and `dvc repro` stops."""
from pipeline import layout
from pipeline.io import atomic_path
from pipeline.preflight import check_named_files
from pipeline.stage import run_stage


def main(params):
    check_named_files(params)
    with atomic_path(layout.PARAMS_CHECKED) as tmp:
        tmp.write_text("params.yaml: valid\n")  # the same bytes every time: a passed check reruns nothing


if __name__ == "__main__":
    run_stage(main)
