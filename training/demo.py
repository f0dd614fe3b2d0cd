"""`make demo`: NL-C2D vs C2D on the embedded "digit under the marker" videos.

    python -m nonlocal_keras.training.demo [--output-dir demo_output] [--seed 0]

1. Writes (or reuses) the synthetic digits MP4 dataset (`synthetic_digits`).
2. Trains the shipped configs `demo_digits_c2d` and `demo_digits_nl_c2d` with
   `nonlocal-train`'s own code path (PyAV decoding in tf.data, SGD + L2, step
   schedule, checkpoints, BackupAndRestore).
3. Evaluates both with the multi-clip x multi-crop protocol.
4. Exports the better one as a SavedModel.
5. Prints a table (params, train time, accuracy), writes `results.json`, and
   `attention.png`: where the marker's query looks in the first frame.
"""

import argparse
import json
import os
import time


RUNS = (("C2D", "demo_digits_c2d"), ("NL-C2D", "demo_digits_nl_c2d"))


def _train(config_name, root, output_dir, seed, extra):
    from nonlocal_keras.training import config as config_lib
    from nonlocal_keras.training import train

    overrides = [f"data.train_csv={os.path.join(root, 'train.csv')}",
                 f"data.val_csv={os.path.join(root, 'test.csv')}",
                 f"runtime.output_dir={os.path.join(output_dir, config_name)}",
                 f"train.seed={seed}", *extra]
    config = config_lib.load_config(config_name, overrides)
    model, results = train.run(config)
    return model, results, config


def export_best(model, export_dir, data_config):
    """Export with the package's exporter (serving preprocessing included) when
    it exists, else plain `model.export`. Returns `(folder, how)`."""
    try:
        from nonlocal_keras.training.export import export_saved_model
    except ImportError:
        model.export(export_dir, format="tf_saved_model")
        return export_dir, "keras.Model.export (nonlocal_keras.training.export not available)"
    path = export_saved_model(model, export_dir, data_config=data_config,
                              class_names=[str(d) for d in range(10)], model_name="demo_digits")
    return str(path), "nonlocal_keras.training.export.export_saved_model"


def _table(rows):
    header = "| model | params | train time (s) | top-1 (%) | top-5 (%) |"
    lines = [header, "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['params']:,} | {row['train_seconds']:.0f} | "
                     f"{100 * row['top1']:.1f} | {100 * row['top5']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nonlocal-keras demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_output")
    parser.add_argument("--data-dir", default=None, help="dataset cache (default: "
                        "$NONLOCAL_KERAS_CACHE or ~/.cache/nonlocal_keras/synthetic_digits)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of both demo configs")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from nonlocal_keras.training import attention_map, synthetic_digits

    start = time.perf_counter()
    root = synthetic_digits.generate(args.data_dir, args.num_train, args.num_test, args.seed)
    print(f"Dataset: {root} ({time.perf_counter() - start:.0f} s)", flush=True)

    rows, models, data_configs = [], {}, {}
    for label, config_name in RUNS:
        print(f"\n== Training {label} ({config_name}) ==", flush=True)
        model, results, config = _train(config_name, root, args.output_dir, args.seed, args.set)
        models[label], data_configs[label] = model, config["data"]
        rows.append({"model": label, "config": config_name, "params": results["params"],
                     "train_seconds": results["train_seconds_this_session"],
                     "epochs": results["epochs_run_this_session"],
                     "top1": results["eval"]["top1"], "top5": results["eval"]["top5"],
                     "eval_views_per_video": results["eval"]["views_per_video"],
                     "eval_videos": results["eval"]["num_videos"]})

    best = max(rows, key=lambda row: row["top1"])
    export_dir, exporter = export_best(models[best["model"]],
                                       os.path.join(args.output_dir, "saved_model"),
                                       data_configs[best["model"]])
    picture = os.path.join(args.output_dir, "attention.png")
    attention_map.save_marker_attention(models["NL-C2D"], root, picture, seed=args.seed)

    table = _table(rows)
    summary = {"rows": rows, "best": best["model"], "saved_model": export_dir,
               "exported_with": exporter, "attention_picture": picture, "seed": args.seed,
               "dataset": root, "total_seconds": round(time.perf_counter() - start, 1)}
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print("\n" + table)
    print(f"\nBest: {best['model']}, exported to {export_dir} ({exporter}).")
    print(f"Attention picture: {picture}. Results: {os.path.join(args.output_dir, 'results.json')}.")
    print(f"Total time: {summary['total_seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
