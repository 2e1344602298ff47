"""The paper tables the runner reproduces, and every published number they compare against.

Tables as data in one place: which pairs a table has, its defaults, its title; and,
keyed by config file (`configs/<key>.py`), what a paper reported for that recipe and
which epoch the number is. Configs hold recipes only.
"""
from __future__ import annotations

DEFAULT_DATASET = "cifar100"

# The two CIFAR-100 tables of the DKD paper (docs/protocol.md §4.1 and §4.2), columns in the paper's order.
TABLES: dict[str, tuple[str, ...]] = {
    "cifar100_same_arch": (
        "resnet56,resnet20", "resnet110,resnet20", "resnet110,resnet32", "resnet32x4,resnet8x4",
        "wrn_40_2,wrn_16_2", "wrn_40_2,wrn_40_1", "vgg13,vgg8"),
    "cifar100_diff_arch": (
        "vgg13,MobileNetV2", "ResNet50,MobileNetV2", "ResNet50,vgg8", "resnet32x4,ShuffleV1",
        "resnet32x4,ShuffleV2", "wrn_40_2,ShuffleV1"),
    # The config's TEACHER,STUDENT (tests check they agree).
    "tiny_cnn_dkd": ("simple_cnn_teacher,simple_cnn_student",),
    # ReviewKD's ablations (MLRC 2021 report): two pairs by default; resnet56,resnet20 (the pair of
    # the report's component table) on request (--pairs).
    "reviewkd_ablation": ("resnet32x4,resnet8x4", "wrn_40_2,wrn_16_2", "resnet56,resnet20"),
    # The DKD paper's ImageNet table (docs/protocol.md §4.4): configs/<method>_imagenet.py, teachers
    # from torchvision's checkpoints named in those configs.
    "imagenet": ("imagenet_resnet34,imagenet_resnet18", "imagenet_resnet50,imagenet_mobilenetv1"),
    # Seed papers: SFTN (KD from the standard vs the student-friendly teacher), FKD (vs KD) and
    # the online methods (AFD vs DML and KDCL; a "pair" is the two networks trained together).
    "sftn": ("resnet32x4,resnet8x4", "wrn_40_2,wrn_16_2", "vgg13,vgg8", "resnet32x4,ShuffleV2"),
    "fkd": ("resnet32x4,resnet8x4", "wrn_40_2,wrn_16_2", "vgg13,vgg8", "resnet32x4,ShuffleV2"),
    "afd": ("resnet32,resnet32",),
}
# The methods a table runs when --methods is not given (default: kd,dkd).
TABLE_DEFAULT_METHODS = {"imagenet": "kd,dkd", "sftn": "kd,sftn", "fkd": "kd,fkd", "afd": "dml,kdcl,afd"}
# Which config files a table's methods come from (default: configs/<method>_cifar.py).
TABLE_CONFIG_SUFFIX = {"imagenet": "_imagenet"}
# The config whose epochs are the table's protocol length (default: the CIFAR teacher recipe).
TABLE_PROTOCOL_CONFIG = {"imagenet": "configs/kd_imagenet.py:", "afd": "configs/afd_cifar.py:"}
# The pairs a table runs when --pairs is not given (default: all of TABLES[table]).
TABLE_DEFAULT_PAIRS = {"reviewkd_ablation": ("resnet32x4,resnet8x4", "wrn_40_2,wrn_16_2")}
# Variant tables: one pair, one config whose argument names the row. The config has ROWS (the
# variants, in order), REPORTED (variant -> published top-1), optionally REPORTED_METRIC,
# REPORTED_NOTES (variant -> text), EPOCHS (the protocol's), and a `teacher` variant (the teacher job).
VARIANT_TABLES = {"tiny_cnn_dkd": "configs/tiny_cnn_cifar10.py"}
TEACHER_VARIANT = "teacher"
# Ablation tables: several pairs, one method config whose argument `teacher,student,<ablation>`
# names the row. The config has ABLATION_ROWS (the baseline first), ABLATION_REPORTED
# (ablation -> pair -> top-1), optionally ABLATION_REPORTED_METRIC (ablation -> 'best' | 'last';
# default 'unknown') and ABLATION_NOTES (ablation -> pair -> text). Teachers: configs/teacher_cifar.py.
ABLATION_TABLES = {"reviewkd_ablation": "configs/reviewkd_cifar.py"}
# Stands for the pair in a MethodSpec.config_arg shared by several pairs.
PAIR_PLACEHOLDER = "{pair}"
# The dataset each table is defined on (config.data.name=... overrides it).
TABLE_DATASETS = {"tiny_cnn_dkd": "cifar10", "imagenet": "imagenet2012"}
TABLE_TITLES = {
    "cifar100_same_arch": "CIFAR-100, teacher and student of the same architecture family "
                          "(DKD paper; docs/protocol.md §4.1)",
    "cifar100_diff_arch": "CIFAR-100, teacher and student of different architecture families "
                          "(DKD paper; docs/protocol.md §4.2)",
    "tiny_cnn_dkd": "CIFAR-10, a third-party DKD study on tiny CNNs: no-KD vs KD vs DKD "
                    "(docs/sources.md [S4]; configs/tiny_cnn_cifar10.py)",
    "reviewkd_ablation": "CIFAR-100, ReviewKD ablations: ABF, what feeds the next level, HCL, review "
                         "(MLRC 2021 report, docs/sources.md [S0]; configs/reviewkd_cifar.py)",
    "imagenet": "ImageNet, KD and DKD (DKD paper; docs/protocol.md §4.4; configs/<method>_imagenet.py)",
    "sftn": "CIFAR-100, SFTN: KD from the standard teacher (`kd`) vs from the student-friendly "
            "teacher (`sftn`) (docs/sources.md [S1]; configs/sftn_cifar.py)",
    "fkd": "CIFAR-100, FKD vs KD (docs/sources.md [S2]; configs/fkd_cifar.py)",
    "afd": "CIFAR-100, online distillation: AFD vs DML and KDCL, two networks trained together "
           "(docs/sources.md [S3]; configs/afd_cifar.py); cells are the ensemble's top-1, results.json "
           "has each network's",
}
# What the "paper" column is, per table (default: the DKD-paper tables' text).
PAPER_NOTES = {
    "tiny_cnn_dkd": "* **paper**: the study's number (its \"mean validation accuracy\"; which epoch is "
                    "not stated, so Δ compares with kdjax's best epoch only). Each row is a variant of "
                    "`configs/tiny_cnn_cifar10.py` (`nokd`: the student alone; `kd_tT`: KD at T, CE 0.5 / "
                    "KD 0.5; `dkd_tT_aA_bB`: DKD at T, alpha A (TCKD), beta B (NCKD)).",
    "reviewkd_ablation": "* **paper**: the ML Reproducibility Challenge 2021 report's number (— where it "
                         "has none): the full method (`release`, the baseline row: the official "
                         "configuration) on every pair it ran, best epoch of the release's code; its "
                         "component ablation on resnet56 → resnet20 only, epoch not stated. Each row is "
                         "an ablation of `configs/reviewkd_cifar.py` (`ABLATIONS`: config.reviewkd "
                         "switches abf, feed, hcl_levels, hcl_weights, review).",
}

# Published teacher and vanilla-student top-1 (RepDistiller README = CRD paper, last epoch;
# the DKD paper copies them): docs/protocol.md §4.1-4.2 and the lists after them.
TEACHER_REPORTED = {"resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "ResNet50": 79.34,
                    "wrn_40_2": 75.61, "vgg13": 74.64}
STUDENT_REPORTED = {"resnet20": 69.06, "resnet32": 71.14, "resnet8x4": 72.50, "wrn_16_2": 73.26,
                    "wrn_40_1": 71.98, "vgg8": 70.36, "MobileNetV2": 64.60, "ShuffleV1": 70.50,
                    "ShuffleV2": 71.82}

# Which epoch each method's published number is (docs/protocol.md §3, docs/methods.md §0.5): the
# RepDistiller/CRD rows report the last epoch, mdistiller (DKD) and official ReviewKD the best.
# A config's own entry in REPORTED_METRIC (below) wins.
METHOD_METRIC = {
    "teacher": "last", "vanilla": "last", "kd": "last", "fitnet": "last", "crd": "last",
    "at": "last", "sp": "last", "cc": "last", "vid": "last", "rkd": "last", "pkt": "last",
    "ab": "last", "ft": "last", "fsp": "last", "nst": "last",
    "dkd": "best", "reviewkd": "best",
}
METRIC_WORDS = {"best": "best epoch", "last": "last epoch", "unknown": "not stated"}

# config -> 'teacher,student' (or variant) -> published top-1 (%).
REPORTED: dict[str, dict[str, float]] = {
    # RepDistiller README (the CRD paper's table; last epoch)
    'ab_cifar': {'resnet56,resnet20': 69.47,
     'resnet110,resnet20': 69.53,
     'resnet110,resnet32': 70.98,
     'resnet32x4,resnet8x4': 73.17,
     'wrn_40_2,wrn_16_2': 72.5,
     'wrn_40_2,wrn_40_1': 72.38,
     'vgg13,vgg8': 70.94,
     'vgg13,MobileNetV2': 66.06,
     'ResNet50,MobileNetV2': 67.2,
     'ResNet50,vgg8': 70.65,
     'resnet32x4,ShuffleV1': 73.55,
     'resnet32x4,ShuffleV2': 74.31,
     'wrn_40_2,ShuffleV1': 73.34},
    # the AFD paper's ResNet-32 pair (Table 3, secondary summary ⚠), under AFD's own recipe
    'afd_cifar': {'resnet32,resnet32': 74.03},
    # RepDistiller README (the CRD paper's table; last epoch)
    'at_cifar': {'resnet56,resnet20': 70.55,
     'resnet110,resnet20': 70.22,
     'resnet110,resnet32': 72.31,
     'resnet32x4,resnet8x4': 73.44,
     'wrn_40_2,wrn_16_2': 74.08,
     'wrn_40_2,wrn_40_1': 72.77,
     'vgg13,vgg8': 71.43,
     'vgg13,MobileNetV2': 59.4,
     'ResNet50,MobileNetV2': 58.58,
     'ResNet50,vgg8': 71.84,
     'resnet32x4,ShuffleV1': 71.73,
     'resnet32x4,ShuffleV2': 72.73,
     'wrn_40_2,ShuffleV1': 73.32},
    # RepDistiller README (the CRD paper's table; last epoch)
    'cc_cifar': {'resnet56,resnet20': 69.63,
     'resnet110,resnet20': 69.48,
     'resnet110,resnet32': 71.48,
     'resnet32x4,resnet8x4': 72.97,
     'wrn_40_2,wrn_16_2': 73.56,
     'wrn_40_2,wrn_40_1': 72.21,
     'vgg13,vgg8': 70.71,
     'vgg13,MobileNetV2': 64.86,
     'ResNet50,MobileNetV2': 65.43,
     'ResNet50,vgg8': 70.25,
     'resnet32x4,ShuffleV1': 71.14,
     'resnet32x4,ShuffleV2': 71.29,
     'wrn_40_2,ShuffleV1': 71.38},
    # RepDistiller README (the CRD paper's table; last epoch)
    'crd_cifar': {'resnet56,resnet20': 71.16,
     'resnet110,resnet20': 71.46,
     'resnet110,resnet32': 73.48,
     'resnet32x4,resnet8x4': 75.51,
     'wrn_40_2,wrn_16_2': 75.48,
     'wrn_40_2,wrn_40_1': 74.14,
     'vgg13,vgg8': 73.94,
     'vgg13,MobileNetV2': 69.73,
     'ResNet50,MobileNetV2': 69.11,
     'ResNet50,vgg8': 74.3,
     'resnet32x4,ShuffleV1': 75.11,
     'resnet32x4,ShuffleV2': 75.65,
     'wrn_40_2,ShuffleV1': 76.05},
    # mdistiller README (best epoch, mean of 5 runs)
    'dkd_cifar': {'resnet56,resnet20': 71.97,
     'resnet110,resnet32': 74.11,
     'resnet32x4,resnet8x4': 76.32,
     'wrn_40_2,wrn_16_2': 76.24,
     'wrn_40_2,wrn_40_1': 74.81,
     'vgg13,vgg8': 74.68,
     'resnet32x4,ShuffleV1': 76.45,
     'wrn_40_2,ShuffleV1': 76.7,
     'resnet32x4,ShuffleV2': 77.07,
     'vgg13,MobileNetV2': 69.71,
     'ResNet50,MobileNetV2': 70.35},
    # mdistiller README / DKD paper (best epoch, mean of 3 runs)
    'dkd_imagenet': {'imagenet_resnet34,imagenet_resnet18': 71.7, 'imagenet_resnet50,imagenet_mobilenetv1': 72.05},
    # none recorded (docs/methods.md §7.15)
    'dml_cifar': {},
    # RepDistiller README (the CRD paper's table; last epoch)
    'fitnet_cifar': {'resnet56,resnet20': 69.21,
     'resnet110,resnet20': 68.99,
     'resnet110,resnet32': 71.06,
     'resnet32x4,resnet8x4': 73.5,
     'wrn_40_2,wrn_16_2': 73.58,
     'wrn_40_2,wrn_40_1': 72.24,
     'vgg13,vgg8': 71.02,
     'vgg13,MobileNetV2': 64.14,
     'ResNet50,MobileNetV2': 63.16,
     'ResNet50,vgg8': 70.69,
     'resnet32x4,ShuffleV1': 73.59,
     'resnet32x4,ShuffleV2': 73.54,
     'wrn_40_2,ShuffleV1': 73.73},
    # not retrieved (docs/methods.md §5.3): none claimed
    'fkd_cifar': {},
    # RepDistiller README (the CRD paper's table; last epoch)
    'fsp_cifar': {'resnet56,resnet20': 69.95,
     'resnet110,resnet20': 70.11,
     'resnet110,resnet32': 71.89,
     'resnet32x4,resnet8x4': 72.62,
     'wrn_40_2,wrn_16_2': 72.91,
     'vgg13,vgg8': 70.23},
    # RepDistiller README (the CRD paper's table; last epoch)
    'ft_cifar': {'resnet56,resnet20': 69.84,
     'resnet110,resnet20': 70.22,
     'resnet110,resnet32': 72.37,
     'resnet32x4,resnet8x4': 72.86,
     'wrn_40_2,wrn_16_2': 73.25,
     'wrn_40_2,wrn_40_1': 71.59,
     'vgg13,vgg8': 70.58,
     'vgg13,MobileNetV2': 61.78,
     'ResNet50,MobileNetV2': 60.99,
     'ResNet50,vgg8': 70.29,
     'resnet32x4,ShuffleV1': 71.75,
     'resnet32x4,ShuffleV2': 72.5,
     'wrn_40_2,ShuffleV1': 72.03},
    # the CRD paper's top-1 (last epoch; the DKD paper copies it)
    'kd_cifar': {'resnet56,resnet20': 70.66,
     'resnet110,resnet20': 70.67,
     'resnet110,resnet32': 73.08,
     'resnet32x4,resnet8x4': 73.33,
     'wrn_40_2,wrn_16_2': 74.92,
     'wrn_40_2,wrn_40_1': 73.54,
     'vgg13,vgg8': 72.98,
     'vgg13,MobileNetV2': 67.37,
     'ResNet50,MobileNetV2': 67.35,
     'ResNet50,vgg8': 73.81,
     'resnet32x4,ShuffleV1': 74.07,
     'resnet32x4,ShuffleV2': 74.45,
     'wrn_40_2,ShuffleV1': 74.83},
    # mdistiller README (best epoch, mean of 3 runs; docs/protocol.md §4.4)
    'kd_imagenet': {'imagenet_resnet34,imagenet_resnet18': 71.03, 'imagenet_resnet50,imagenet_mobilenetv1': 70.5},
    # none recorded (docs/methods.md §7.16)
    'kdcl_cifar': {},
    # none published in the reference READMEs
    'kdsvd_cifar': {},
    # RepDistiller README (the CRD paper's table; last epoch)
    'nst_cifar': {'resnet56,resnet20': 69.6,
     'resnet110,resnet20': 69.53,
     'resnet110,resnet32': 71.96,
     'resnet32x4,resnet8x4': 73.3,
     'wrn_40_2,wrn_16_2': 73.68,
     'wrn_40_2,wrn_40_1': 72.24,
     'vgg13,vgg8': 71.53,
     'vgg13,MobileNetV2': 58.16,
     'ResNet50,MobileNetV2': 64.96,
     'ResNet50,vgg8': 71.28,
     'resnet32x4,ShuffleV1': 74.12,
     'resnet32x4,ShuffleV2': 74.68,
     'wrn_40_2,ShuffleV1': 74.89},
    # the DKD paper's tables (mdistiller runs, best epoch)
    'ofd_cifar': {'resnet56,resnet20': 70.98,
     'resnet110,resnet32': 73.23,
     'resnet32x4,resnet8x4': 74.95,
     'wrn_40_2,wrn_16_2': 75.24,
     'wrn_40_2,wrn_40_1': 74.33,
     'vgg13,vgg8': 73.95,
     'resnet32x4,ShuffleV1': 75.98,
     'wrn_40_2,ShuffleV1': 75.85,
     'vgg13,MobileNetV2': 69.48,
     'ResNet50,MobileNetV2': 69.04,
     'resnet32x4,ShuffleV2': 76.82},
    # RepDistiller README (the CRD paper's table; last epoch)
    'pkt_cifar': {'resnet56,resnet20': 70.34,
     'resnet110,resnet20': 70.25,
     'resnet110,resnet32': 72.61,
     'resnet32x4,resnet8x4': 73.64,
     'wrn_40_2,wrn_16_2': 74.54,
     'wrn_40_2,wrn_40_1': 73.45,
     'vgg13,vgg8': 72.88,
     'vgg13,MobileNetV2': 67.13,
     'ResNet50,MobileNetV2': 66.52,
     'ResNet50,vgg8': 73.01,
     'resnet32x4,ShuffleV1': 74.1,
     'resnet32x4,ShuffleV2': 74.69,
     'wrn_40_2,ShuffleV1': 73.89},
    # the ReviewKD paper (best epoch)
    'reviewkd_cifar': {'resnet56,resnet20': 71.89,
     'resnet110,resnet32': 73.89,
     'resnet32x4,resnet8x4': 75.63,
     'wrn_40_2,wrn_16_2': 76.12,
     'wrn_40_2,wrn_40_1': 75.09,
     'wrn_40_2,ShuffleV1': 77.14,
     'resnet32x4,ShuffleV1': 77.45,
     'resnet32x4,ShuffleV2': 77.78,
     'vgg13,vgg8': 74.84,
     'vgg13,MobileNetV2': 70.37,
     'ResNet50,MobileNetV2': 69.89},
    # ReviewKD ImageNet/README.md (best epoch; docs/protocol.md §4.4)
    'reviewkd_imagenet': {'imagenet_resnet34,imagenet_resnet18': 71.61, 'imagenet_resnet50,imagenet_mobilenetv1': 72.56},
    # RepDistiller README (the CRD paper's table; last epoch)
    'rkd_cifar': {'resnet56,resnet20': 69.61,
     'resnet110,resnet20': 69.25,
     'resnet110,resnet32': 71.82,
     'resnet32x4,resnet8x4': 71.9,
     'wrn_40_2,wrn_16_2': 73.35,
     'wrn_40_2,wrn_40_1': 72.22,
     'vgg13,vgg8': 71.48,
     'vgg13,MobileNetV2': 64.52,
     'ResNet50,MobileNetV2': 64.43,
     'ResNet50,vgg8': 71.5,
     'resnet32x4,ShuffleV1': 72.28,
     'resnet32x4,ShuffleV2': 73.21,
     'wrn_40_2,ShuffleV1': 72.21},
    # the paper's Tables 1-2 were not available (docs/methods.md §4.3): none claimed
    'sftn_cifar': {},
    # RepDistiller README (the CRD paper's table; last epoch)
    'sp_cifar': {'resnet56,resnet20': 69.67,
     'resnet110,resnet20': 70.04,
     'resnet110,resnet32': 72.69,
     'resnet32x4,resnet8x4': 72.94,
     'wrn_40_2,wrn_16_2': 73.83,
     'wrn_40_2,wrn_40_1': 72.43,
     'vgg13,vgg8': 72.68,
     'vgg13,MobileNetV2': 66.3,
     'ResNet50,MobileNetV2': 68.08,
     'ResNet50,vgg8': 73.34,
     'resnet32x4,ShuffleV1': 73.48,
     'resnet32x4,ShuffleV2': 74.56,
     'wrn_40_2,ShuffleV1': 74.52},
    # the third-party tiny-CNN study (docs/sources.md [S4])
 'tiny_cnn_cifar10': {'nokd': 56.74,
     'kd_t1': 59.87,
     'kd_t5': 57.92,
     'dkd_t1_a0.7_b0.25': 59.27,
     'dkd_t1_a0.7_b0.5': 58.15,
     'dkd_t1_a0.7_b0.75': 56.84,
     'dkd_t1_a0.7_b1': 56.07,
     'dkd_t1_a0.7_b1.5': 52.84,
     'dkd_t1_a1_b1.5': 53.66,
     'dkd_t1_a1_b2': 56.28,
     'dkd_t1_a1_b2.5': 36.71,
     'dkd_t2_a1_b2': 1.0,
     'dkd_t4_a1_b2': 1.0},
    # RepDistiller README (the CRD paper's table; last epoch)
    'vid_cifar': {'resnet56,resnet20': 70.38,
     'resnet110,resnet20': 70.16,
     'resnet110,resnet32': 72.61,
     'resnet32x4,resnet8x4': 73.09,
     'wrn_40_2,wrn_16_2': 74.11,
     'wrn_40_2,wrn_40_1': 73.3,
     'vgg13,vgg8': 71.23,
     'vgg13,MobileNetV2': 65.56,
     'ResNet50,MobileNetV2': 67.57,
     'ResNet50,vgg8': 70.3,
     'resnet32x4,ShuffleV1': 73.38,
     'resnet32x4,ShuffleV2': 73.4,
     'wrn_40_2,ShuffleV1': 73.61},
}

# config -> 'best' | 'last' | 'unknown' where it is not the method family's default
# (`METHOD_METRIC` in specs.py: RepDistiller/CRD rows last, mdistiller/ReviewKD best).
REPORTED_METRIC: dict[str, str] = {'afd_cifar': 'unknown',
 'crd_cifar': 'last',
 'dkd_imagenet': 'best',
 'kd_imagenet': 'best',
 'ofd_cifar': 'best',
 'reviewkd_cifar': 'best',
 'reviewkd_imagenet': 'best',
 'tiny_cnn_cifar10': 'unknown'}

# tiny_cnn_cifar10: the study lists no-KD twice (56.74 beside the KD T=1 rows, 56.49 beside
# the KD T=5 rows); REPORTED uses the first, these notes keep both.
REPORTED_NOTES: dict[str, dict[str, str]] = {'tiny_cnn_cifar10': {'nokd': 'the study lists 56.74 and 56.49 (two no-KD runs)',
                      'dkd_t2_a1_b2': 'the study: for T > 1 (e.g. T = 2) the DKD loss is NaN and '
                                      'accuracy 1.0% (its alpha/beta for that run are not stated)',
                      'dkd_t4_a1_b2': 'as T = 2: the study reports NaN loss / 1.0% for every T > '
                                      '1'}}

# ofd_cifar: entries that are single readings of the DKD paper, unconfirmed by a second copy (⚠).
UNCONFIRMED: dict[str, set[str]] = {'ofd_cifar': frozenset({'resnet110,resnet32',
                         'vgg13,MobileNetV2',
                         'vgg13,vgg8',
                         'wrn_40_2,ShuffleV1',
                         'wrn_40_2,wrn_16_2'})}

# reviewkd_cifar's ablation table (MLRC 2021 reproduction, DevPranjal/ml-repro-2021 README;
# docs/methods.md §3.5-3.6): the rows in order (the baseline first), the full method on every
# pair it ran, the components on resnet56,resnet20 only.
ABLATION_ROWS: dict[str, tuple[str, ...]] = {'reviewkd_cifar': ('release',
                    'no_abf',
                    'feed_output',
                    'hcl_full_4',
                    'hcl_equal_weights',
                    'no_hcl',
                    'no_review',
                    'rlf_only',
                    'none')}
ABLATION_REPORTED: dict[str, dict[str, dict[str, float]]] = {'reviewkd_cifar': {'release': {'resnet32x4,resnet8x4': 76.02,
                                'wrn_40_2,wrn_16_2': 76.27,
                                'resnet56,resnet20': 71.79},
                    'no_abf': {'resnet56,resnet20': 71.51},
                    'no_hcl': {'resnet56,resnet20': 71.28},
                    'rlf_only': {'resnet56,resnet20': 69.92},
                    'none': {'resnet56,resnet20': 69.5}}}
# The full-method rows ran the release's code (best epoch); the component rows ran MLRC's own
# re-implementation, whose reported epoch is not stated.
ABLATION_REPORTED_METRIC: dict[str, dict[str, str]] = {'reviewkd_cifar': {'release': 'best'}}
ABLATION_NOTES: dict[str, dict[str, dict[str, str]]] = {'reviewkd_cifar': {'release': {'resnet56,resnet20': "MLRC's component ablation, λ = 0.7 (this "
                                                     "config: the release's 0.6)"},
                    'no_abf': {'resnet56,resnet20': "MLRC's component ablation, λ = 0.7 (this "
                                                    "config: the release's 0.6)"},
                    'no_hcl': {'resnet56,resnet20': "MLRC's component ablation, λ = 0.7 (this "
                                                    "config: the release's 0.6)"},
                    'rlf_only': {'resnet56,resnet20': "MLRC's component ablation, λ = 0.7 (this "
                                                      "config: the release's 0.6)"},
                    'none': {'resnet56,resnet20': "MLRC's component ablation, λ = 0.7 (this "
                                                  "config: the release's 0.6)"}}}

# A config whose teacher is a job of its own (SFTN's student-friendly teacher: phase 1 alone,
# one per pair): the config argument of that job ({pair} stands for the pair).
TEACHER_JOB: dict[str, str] = {'sftn_cifar': '{pair},teacher'}

# The 2021-2024 methods (logit standardization, DIST, CTKD, ICKD, DOT, ...) keep their tables
# and published numbers in recent.py; one merged view here.
from . import recent  # noqa: E402  pylint: disable=wrong-import-position
TABLES.update(recent.TABLES)
TABLE_DEFAULT_METHODS.update(recent.DEFAULT_METHODS)
TABLE_TITLES.update(recent.TITLES)
REPORTED.update(recent.REPORTED)
REPORTED_METRIC.update(recent.REPORTED_METRIC)
REPORTED_NOTES.update(recent.REPORTED_NOTES)
