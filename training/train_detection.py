"""`nonlocal-train-detection`: Model Garden's vision trainer for the non-local Mask R-CNN.

The same command line as `official.vision.train` (`--experiment`,
`--config_file`, `--params_override`, `--mode`, `--model_dir`), with the
non-local backbone and the experiment `maskrcnn_resnetfpn_nonlocal_coco`
registered, plus:

- `--synthetic_coco_dir DIR`: generate the embedded synthetic-shapes COCO
  dataset in DIR (once) and train / evaluate on it;
- `--export_dir DIR`: after the `--mode` run, export the latest checkpoint
  of `--model_dir` with Model Garden's detection export module (`--mode eval
  --export_dir DIR` evaluates a trained model, then exports it).

Examples:
    nonlocal-train-detection --experiment maskrcnn_resnetfpn_nonlocal_coco \\
      --config_file training/configs/maskrcnn_nonlocal_tiny.yaml \\
      --synthetic_coco_dir /tmp/nl_coco --mode train_and_eval --model_dir /tmp/nl_maskrcnn
    nonlocal-train-detection ... --mode eval --export_dir /tmp/nl_maskrcnn/export
"""

from absl import app

from nonlocal_keras.applications.mask_rcnn import trainer


def main():
    trainer.define_flags()
    app.run(trainer.run)


if __name__ == "__main__":
    main()
