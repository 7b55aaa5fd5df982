from typing import ClassVar

from tests.models.backbone_tester import BackboneTester


class TestBasicUNet(BackboneTester):
    backbone = "basicunet"
    backbone_kwargs: ClassVar[dict] = {"features": (8, 8, 16, 32, 64, 8)}


class TestBasicUNetPlusPlus(BackboneTester):
    backbone = "basicunetpp"
    backbone_kwargs: ClassVar[dict] = {"features": (8, 8, 16, 32, 64, 8)}
