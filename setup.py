"""Build hook only (the package is described in pyproject.toml): installs `peft_ckt_autoload.pth` into
site-packages, the start-up hook that registers the "ckt" peft method when peft is imported and the LeRobot policy
types when LeRobot's policy registry is (see `_peft_ckt_autoload.py`)."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "peft_ckt_autoload.pth"
HERE = os.path.dirname(os.path.abspath(__file__))


class build_py_with_pth(build_py):
    def run(self) -> None:
        super().run()
        # A wheel installs the root of build_lib into site-packages. An editable install (setuptools'
        # editable_wheel) builds its wheel from install_lib instead, and does not copy build_lib there.
        if getattr(self, "editable_mode", False):
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        self.copy_file(os.path.join(HERE, PTH_NAME), os.path.join(target, PTH_NAME), preserve_mode=False)


setup(cmdclass={"build_py": build_py_with_pth})
