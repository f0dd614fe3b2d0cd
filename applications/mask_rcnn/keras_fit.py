"""Train a Model Garden Mask R-CNN (or Keypoint R-CNN) task with `model.fit`, and evaluate it.

`TaskModel` is a small `tf_keras.Model` around a task and its model: its
`train_step` is the task's own step (forward pass, `task.build_losses`,
gradients, loss scaling for `mixed_float16`), so `fit` trains exactly what
Model Garden's trainer trains, under whatever `tf.distribute` strategy scope
and `tf_keras` callbacks the caller uses. `evaluate` runs the task's
validation step and Model Garden's COCO evaluator (pycocotools).
"""

import tensorflow as tf
import tf_keras


class TaskModel(tf_keras.Model):
    """`model.fit` for a Model Garden task.

    Args:
        task: a Model Garden task, e.g. `NonLocalMaskRCNNTask`.
        model: the task's model (`task.build_model()`), built in the same
            strategy scope as this wrapper.

    Compile with the task's optimizer: `compile(optimizer=task.create_optimizer(
    trainer_config.optimizer_config, runtime_config))`. Each loss of
    `task.build_losses` is logged as a running mean; a Keypoint R-CNN task
    also logs `labelled_keypoints`, the epoch's count of labelled ground-truth
    keypoints (0: the keypoint head learns nothing from the data).
    """

    def __init__(self, task, model, **kwargs):
        super().__init__(**kwargs)
        self.task = task
        self.model = model
        self.loss_trackers = task.build_metrics(training=True)

    @property
    def metrics(self):
        # Reset by fit at each epoch.
        return list(self.loss_trackers)

    def call(self, images, training=None, **kwargs):
        return self.model(images, training=training, **kwargs)

    def train_step(self, data):
        self.task.train_step(data, self.model, self.optimizer, metrics=self.loss_trackers)
        return {m.name: m.result() for m in self.loss_trackers}


def evaluate(task, model, dataset=None, steps=None):
    """Box and mask (or keypoint) COCO metrics of `model` on the task's validation data.

    Args:
        task: a Model Garden Mask R-CNN task whose `annotation_file` (or the
            ground truth in the records) the COCO evaluator reads.
        model: the task's model.
        dataset: defaults to `task.build_inputs(task.task_config.validation_data)`.
        steps: number of batches; `None` runs the whole dataset.

    Returns:
        Model Garden's metric dict: `AP`, `AP50`, ... for boxes and
        `mask_AP`, `mask_AP50`, ... for masks (`keypoint_AP`, ... for a
        Keypoint R-CNN task), as Python floats.
    """
    if dataset is None:
        dataset = task.build_inputs(task.task_config.validation_data)
    task.build_metrics(training=False)  # creates the task's COCO evaluator
    validation_step = tf.function(lambda batch: task.validation_step(batch, model))
    state = None
    for index, batch in enumerate(dataset):
        if steps is not None and index >= steps:
            break
        state = task.aggregate_logs(state, validation_step(batch))
    if state is None:
        raise ValueError(f"No validation batch was evaluated. Received: steps={steps}")
    return {key: float(value) for key, value in task.reduce_aggregated_logs(state).items()}
