"""Data sources for compression tasks: loaders plus a :class:`DataSpec` for reports.

Every loader function returns a :class:`TaskData` (train / val / optional test / optional calib
``DataLoader`` objects and the spec). Conventions:

* batches are ``(x, y)``: ``x`` float32 ``(B, C, H, W)`` already normalised with
  ``spec.mean`` / ``spec.std`` (per channel, applied to values scaled to [0, 1]); ``y`` int64
  ``(B,)`` class indices in ``[0, spec.num_classes)``;
* splits are stratified and seeded; the train loader shuffles with a seeded ``torch.Generator``;
  val/test loaders do not shuffle. Same seed -> identical tensors and batch order (image folders
  with the teacher's config: the same files in the same order; their train crops are random and
  drawn from torch's generators, in the loader's workers when it has any).

Modules (issue 15, part 4; issue 17):

* :mod:`compress.data.spec` -- the data model: :class:`DataSpec`, :class:`Preprocess`, :class:`TaskData`;
* :mod:`compress.data.splits` -- seeded stratified splits and shared checks;
* :mod:`compress.data.sources` -- :func:`load_digits_task` (sklearn's bundled digits, no
  download), :func:`load_npz_task`, and :func:`load_task` (dispatch on a string/path);
* :mod:`compress.data.image_folder` -- :func:`load_image_folder_task`, read lazily in the
  loaders' workers, with the teacher's data config;
* :mod:`compress.data.transforms` -- the teacher's data config (timm's ``resolve_data_config`` /
  ``create_transform``, torchvision weights' ``transforms()``) and the user's overrides;
* :mod:`compress.data.adapters` -- :func:`make_task` / :func:`as_task_data` (the caller's own
  datasets or loaders, used as given) and :func:`collect`.

Errors are :class:`compress.errors.DataError`.
"""

from compress.data.adapters import as_task_data, collect, iter_batches, make_task
from compress.data.image_folder import AUTO_WORKERS_MIN_IMAGES, auto_num_workers, load_image_folder_task
from compress.data.sources import load_digits_task, load_npz_task, load_task
from compress.data.spec import IMAGENET_MEAN, IMAGENET_STD, DataSpec, Preprocess, TaskData
from compress.data.transforms import INTERPOLATIONS, resolve_data_config

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "AUTO_WORKERS_MIN_IMAGES",
    "DataSpec",
    "Preprocess",
    "TaskData",
    "load_digits_task",
    "load_npz_task",
    "load_image_folder_task",
    "load_task",
    "make_task",
    "as_task_data",
    "collect",
    "iter_batches",
    "auto_num_workers",
    "resolve_data_config",
]
