from setuptools import find_packages, setup

# The only place that knows how folders map to import names (DESIGN.md section 1).
setup(
    packages=find_packages("core")
    + find_packages("api")
    + find_packages("paste")
    + find_packages("registry")
    + find_packages("cmd")
    # The shipped metadata definitions (etc/metadefs/*.json): data only, no module.
    + ["abbild_cmd.metadefs_files"],
    package_dir={
        "abbild": "core/abbild",
        "abbild_api": "api/abbild_api",
        "abbild_paste": "paste/abbild_paste",
        "abbild_registry": "registry/abbild_registry",
        "abbild_cmd": "cmd/abbild_cmd",
        "abbild_cmd.metadefs_files": "etc/metadefs",
    },
)
