"""Registry of the built-in datasets: names, classes, shapes, files and official checksums."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import RobustlabError


@dataclass(frozen=True)
class RemoteFile:
    """One official download: file name, URL and checksums.

    ``md5``/``sha256`` are digests of the file as downloaded (e.g. the ``.gz``);
    ``content_md5`` is the digest of the decompressed content, where known, which also
    identifies copies whose gzip wrapper was rewritten.
    """

    filename: str
    url: str
    md5: str | None = None
    sha256: str | None = None
    content_md5: str | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a built-in dataset.

    ``split_files`` maps a split to the files it is read from (for IDX datasets: images,
    labels); ``dir_names`` are the folder names looked for under each data root.
    """

    name: str
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    splits: tuple[str, ...]
    description: str
    needs_download: bool
    split_files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    files: tuple[RemoteFile, ...] = ()
    dir_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _idx_files(base_url: str, md5: dict[str, str], content_md5: dict[str, str]) -> tuple:
    return tuple(
        RemoteFile(f"{stem}.gz", f"{base_url}{stem}.gz", md5=md5[stem], content_md5=content_md5[stem])
        for stem in md5
    )


_IDX_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Official MD5s of the .gz downloads (as published with the datasets and used by torchvision)
# and of their decompressed content.
_MNIST_FILES = _idx_files(
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    {
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
)

_FASHION_FILES = _idx_files(
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    {
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
)

DIGIT_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_BATCH_DIR = "cifar-10-batches-py"
CIFAR10_JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        classes=DIGIT_CLASSES,
        input_shape=(1, 28, 28),
        splits=("train", "test"),
        description="MNIST handwritten digits, 28x28 grayscale, 60,000 train / 10,000 test (IDX files).",
        needs_download=True,
        split_files=_IDX_SPLITS,
        files=_MNIST_FILES,
        dir_names=("mnist", "MNIST/raw"),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        classes=FASHION_CLASSES,
        input_shape=(1, 28, 28),
        splits=("train", "test"),
        description="Zalando Fashion-MNIST, 28x28 grayscale, 60,000 train / 10,000 test (IDX files).",
        needs_download=True,
        split_files=_IDX_SPLITS,
        files=_FASHION_FILES,
        dir_names=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        classes=CIFAR10_CLASSES,
        input_shape=(3, 32, 32),
        splits=("train", "test"),
        description=(
            "CIFAR-10, 32x32 RGB, 50,000 train / 10,000 test: the canonical python batches "
            "(cifar-10-batches-py or its .tar.gz) or JPEG image folders train/<class>/, test/<class>/."
        ),
        needs_download=True,
        split_files={
            "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
            "test": ("test_batch",),
        },
        files=(
            RemoteFile(
                CIFAR10_ARCHIVE,
                f"https://www.cs.toronto.edu/~kriz/{CIFAR10_ARCHIVE}",
                md5="c58f30108f718f92721af3b95e74349a",
            ),
        ),
        dir_names=("cifar10", "cifar10-jpeg", CIFAR10_BATCH_DIR, f"cifar10/{CIFAR10_BATCH_DIR}"),
    ),
    "digits": DatasetInfo(
        name="digits",
        classes=DIGIT_CLASSES,
        input_shape=(1, 8, 8),
        splits=("train", "test"),
        description=(
            "scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download); "
            "a fixed stratified 75/25 train/test split."
        ),
        needs_download=False,
    ),
}

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for ``name`` (case-insensitive, common aliases accepted)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise RobustlabError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[key]


def check_split(info: DatasetInfo, split: str) -> None:
    if split not in info.splits:
        raise RobustlabError(
            f"dataset {info.name!r} has no split {split!r}; available: {', '.join(info.splits)}"
        )
