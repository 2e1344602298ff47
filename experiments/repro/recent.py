"""The 2021-2024 methods' tables and published numbers (merged into `tables`, which holds the rest).

One entry per paper: its table (the pairs of its release's CIFAR-100 results, KD beside it),
its title, and what its release reports, keyed by config file. The `modern` table puts
every such method side by side on the pairs most of them report.
"""
from __future__ import annotations

TABLES: dict[str, tuple[str, ...]] = {
    # Logit standardization (CVPR 2024): the 14 pairs of its README's KD+LS rows, KD beside it.
    "ls": ("resnet32x4,resnet8x4", "vgg13,vgg8", "wrn_40_2,wrn_40_1", "wrn_40_2,wrn_16_2",
           "resnet56,resnet20", "resnet110,resnet32", "resnet110,resnet20", "resnet32x4,ShuffleV2",
           "resnet32x4,wrn_16_2", "resnet32x4,wrn_40_2", "wrn_40_2,resnet8x4", "wrn_40_2,MobileNetV2",
           "vgg13,MobileNetV2", "ResNet50,MobileNetV2"),
    # DIST (NeurIPS 2022): the six pairs of its release's CIFAR-100 table, KD beside it.
    "dist": ("wrn_40_2,wrn_40_1", "resnet56,resnet20", "resnet32x4,resnet8x4", "ResNet50,MobileNetV2",
             "resnet32x4,ShuffleV1", "resnet32x4,ShuffleV2"),
    # CTKD (AAAI 2023): the six pairs of its release's CIFAR-100 table, KD beside it.
    "ctkd": ("resnet56,resnet20", "resnet110,resnet32", "resnet110,resnet20", "wrn_40_2,wrn_16_2",
             "wrn_40_2,wrn_40_1", "vgg13,vgg8"),
    # ICKD (ICCV 2021): the seven pairs of its release's CIFAR-100 table, KD beside it.
    "ickd": ("wrn_40_2,wrn_16_2", "wrn_40_2,wrn_40_1", "resnet56,resnet20", "resnet110,resnet20",
             "resnet110,resnet32", "resnet32x4,resnet8x4", "vgg13,vgg8"),
    # DOT (ICCV 2023): the three pairs of mdistiller's DOT configs, KD beside it.
    "dot": ("resnet32x4,resnet8x4", "vgg13,vgg8", "resnet32x4,ShuffleV2"),
    # SRD/SRRL (ICLR 2021): the two zoo pairs of SimKD's README, which reports SRRL as a baseline.
    "srd": ("resnet32x4,resnet8x4", "resnet32x4,vgg8"),
    # SimKD (CVPR 2022): the two zoo pairs of its README (teacher resnet32x4 for every column).
    "simkd": ("resnet32x4,resnet8x4", "resnet32x4,vgg8"),
    # WKD (NeurIPS 2024): the two pairs of its release's CIFAR-100 table.
    "wkd": ("resnet32x4,resnet8x4", "wrn_40_2,ShuffleV1"),
    # MLKD (CVPR 2023): the 14 pairs of the logit-standardization release's MLKD rows.
    "mlkd": ("resnet32x4,resnet8x4", "vgg13,vgg8", "wrn_40_2,wrn_40_1", "wrn_40_2,wrn_16_2", "resnet56,resnet20",
             "resnet110,resnet32", "resnet110,resnet20", "resnet32x4,ShuffleV2", "resnet32x4,wrn_16_2",
             "resnet32x4,wrn_40_2", "wrn_40_2,resnet8x4", "wrn_40_2,MobileNetV2", "vgg13,MobileNetV2",
             "ResNet50,MobileNetV2"),
    # SSKD (ECCV 2020): the eleven pairs of its release's README.
    "sskd": ("wrn_40_2,wrn_16_2", "wrn_40_2,wrn_40_1", "resnet56,resnet20", "resnet32x4,resnet8x4", "vgg13,vgg8",
             "vgg13,MobileNetV2", "ResNet50,MobileNetV2", "ResNet50,vgg8", "resnet32x4,ShuffleV1",
             "resnet32x4,ShuffleV2", "wrn_40_2,ShuffleV1"),
    # Tf-KD (CVPR 2020): self-training (a student distilled from its own architecture) on the zoo's
    # CRD-benchmark students; no published number for these networks.
    "tfkd": ("resnet20,resnet20", "resnet32,resnet32", "resnet8x4,resnet8x4", "wrn_16_2,wrn_16_2",
             "wrn_40_1,wrn_40_1", "vgg8,vgg8", "MobileNetV2,MobileNetV2", "ShuffleV1,ShuffleV1",
             "ShuffleV2,ShuffleV2"),
    # Every recent method on the pairs most of them report (a method skips the pairs its config lacks).
    "modern": ("resnet32x4,resnet8x4", "vgg13,vgg8", "wrn_40_2,wrn_40_1", "resnet56,resnet20",
               "resnet32x4,ShuffleV2"),
}
DEFAULT_METHODS = {"ls": "kd,kd_ls,dkd,dkd_ls,ctkd,ctkd_ls", "dist": "kd,dist", "ctkd": "kd,ctkd", "ickd": "kd,ickd", "dot": "kd,dot",
                   "srd": "kd,srd", "simkd": "kd,srd,simkd", "tfkd": "vanilla,tfkd",
                   "wkd": "kd,wkd", "mlkd": "kd,mlkd", "sskd": "kd,sskd",
                   "modern": "kd,kd_ls,dist,ctkd,ickd,dot,mlkd,srd,simkd,wkd,sskd"}
TITLES = {
    "ls": "CIFAR-100, KD, DKD and CTKD with logit standardization (`kd_ls`, `dkd_ls`, `ctkd_ls`) vs "
          "without (docs/sources.md [S5]; configs/{kd,dkd,ctkd}_ls_cifar.py; MLKD+LS: the mlkd table)",
    "ctkd": "CIFAR-100, CTKD (curriculum temperature) vs KD (docs/sources.md [S7]; configs/ctkd_cifar.py)",
    "ickd": "CIFAR-100, ICKD-C vs KD (docs/sources.md [S8]; configs/ickd_cifar.py)",
    "dist": "CIFAR-100, DIST vs KD (docs/sources.md [S6]; configs/dist_cifar.py)",
    "dot": "CIFAR-100, KD trained by DOT vs KD (docs/sources.md [S9]; configs/dot_cifar.py)",
    "srd": "CIFAR-100, SRD (SRRL) vs KD (docs/sources.md [S11]; configs/srd_cifar.py)",
    "simkd": "CIFAR-100, SimKD vs SRD and KD (docs/sources.md [S11]; configs/simkd_cifar.py)",
    "wkd": "CIFAR-100, WKD-L vs KD (docs/sources.md [S12]; configs/wkd_cifar.py; `:PAIR,f` and `:PAIR,lf` "
           "the other variants)",
    "mlkd": "CIFAR-100, MLKD vs KD (docs/sources.md [S13]; configs/mlkd_cifar.py: MLKD's own protocol, "
            "`:PAIR,ls_protocol` the LS release's 480 epochs, `:PAIR,ls` MLKD+LS)",
    "sskd": "CIFAR-100, SSKD vs KD (docs/sources.md [S14]; configs/sskd_cifar.py)",
    "tfkd": "CIFAR-100, Tf-KD self-training vs the student alone (docs/sources.md [S10]; configs/tfkd_cifar.py)",
    "modern": "CIFAR-100, the 2021-2024 methods side by side (each its release's recipe; "
              "docs/sources.md [S5]-[S9])",
}

REPORTED: dict[str, dict[str, float]] = {
    # Logit standardization's README (docs/sources.md [S5]): the KD+Ours rows; epoch not stated.
    'kd_ls_cifar': {'resnet32x4,resnet8x4': 76.62, 'vgg13,vgg8': 74.36, 'wrn_40_2,wrn_40_1': 74.37,
                    'wrn_40_2,wrn_16_2': 76.11, 'resnet56,resnet20': 71.43, 'resnet110,resnet32': 74.17,
                    'resnet110,resnet20': 71.48, 'resnet32x4,ShuffleV2': 75.56,
                    'resnet32x4,wrn_16_2': 75.26, 'resnet32x4,wrn_40_2': 77.92,
                    'wrn_40_2,resnet8x4': 77.11, 'wrn_40_2,MobileNetV2': 69.23,
                    'vgg13,MobileNetV2': 68.61, 'ResNet50,MobileNetV2': 69.02},
    # Logit standardization's README (docs/sources.md [S5]): the DKD+Ours rows; epoch not stated.
    'dkd_ls_cifar': {'resnet32x4,resnet8x4': 77.01, 'vgg13,vgg8': 74.81, 'wrn_40_2,wrn_40_1': 74.89,
                     'wrn_40_2,wrn_16_2': 76.39, 'resnet56,resnet20': 72.32, 'resnet110,resnet32': 74.29,
                     'resnet110,resnet20': 71.85, 'resnet32x4,ShuffleV2': 77.37, 'resnet32x4,wrn_16_2': 76.19,
                     'resnet32x4,wrn_40_2': 78.95, 'wrn_40_2,resnet8x4': 76.75, 'wrn_40_2,MobileNetV2': 70.01,
                     'vgg13,MobileNetV2': 69.98, 'ResNet50,MobileNetV2': 70.45},
    # Logit standardization's README (docs/sources.md [S5]): the CTKD+Ours rows; epoch not stated.
    'ctkd_ls_cifar': {'resnet32x4,resnet8x4': 76.67, 'vgg13,vgg8': 74.47, 'wrn_40_2,wrn_40_1': 74.58,
                      'wrn_40_2,wrn_16_2': 76.08, 'resnet56,resnet20': 71.34, 'resnet110,resnet32': 74.01,
                      'resnet110,resnet20': 71.39, 'resnet32x4,ShuffleV2': 76.18, 'resnet32x4,wrn_16_2': 75.16,
                      'resnet32x4,wrn_40_2': 77.99, 'wrn_40_2,resnet8x4': 77.03, 'wrn_40_2,MobileNetV2': 69.53,
                      'vgg13,MobileNetV2': 68.98, 'ResNet50,MobileNetV2': 69.36},
    # CTKD's release README (docs/sources.md [S7]): the KD+CTKD row; epoch not stated.
    'ctkd_cifar': {'resnet56,resnet20': 71.19, 'resnet110,resnet32': 73.52, 'resnet110,resnet20': 70.99,
                   'wrn_40_2,wrn_16_2': 75.45, 'wrn_40_2,wrn_40_1': 73.93, 'vgg13,vgg8': 73.52},
    # ICKD's release README (docs/sources.md [S8]): the "ICKD-C (Ours)" row (with KL; the w/o-KL
    # row in REPORTED_NOTES); epoch not stated.
    'ickd_cifar': {'wrn_40_2,wrn_16_2': 75.57, 'wrn_40_2,wrn_40_1': 74.63, 'resnet56,resnet20': 71.69,
                   'resnet110,resnet20': 71.91, 'resnet110,resnet32': 74.11, 'resnet32x4,resnet8x4': 75.48,
                   'vgg13,vgg8': 73.88},
    # DIST's release README (docs/sources.md [S6]): mean of its runs (± in REPORTED_NOTES); epoch not stated.
    'dist_cifar': {'wrn_40_2,wrn_40_1': 74.43, 'resnet56,resnet20': 71.75, 'resnet32x4,resnet8x4': 76.31,
                   'ResNet50,MobileNetV2': 68.66, 'resnet32x4,ShuffleV1': 76.34, 'resnet32x4,ShuffleV2': 77.35},
    # mdistiller's README (docs/sources.md [S9]): the KD+DOT row; epoch not stated (mdistiller
    # reports best epochs elsewhere, its DOT rows do not say).
    'dot_cifar': {'resnet32x4,resnet8x4': 75.12, 'vgg13,vgg8': 73.77, 'resnet32x4,ShuffleV2': 75.55},
    # SimKD's README (docs/sources.md [S11]): its SRRL row, SimKD's own runs and teacher; epoch not stated.
    'srd_cifar': {'resnet32x4,resnet8x4': 75.39, 'resnet32x4,vgg8': 73.23},
    # SimKD's README (docs/sources.md [S11]): its "SimKD (f=2)" row, its own teacher and runs; epoch not
    # stated (f=4 and f=8 in REPORTED_NOTES).
    'simkd_cifar': {'resnet32x4,resnet8x4': 78.08, 'resnet32x4,vgg8': 75.76},
    # WKD's README (docs/sources.md [S12]): the WKD-L row (WKD-F and WKD-L+F in REPORTED_NOTES), with the
    # release's CKA cost files; epoch not stated.
    'wkd_cifar': {'resnet32x4,resnet8x4': 76.53, 'wrn_40_2,ShuffleV1': 76.72},
    # The logit-standardization release's README (docs/sources.md [S5]): its MLKD row (MLKD+LS in
    # REPORTED_NOTES); which protocol (MLKD's 240 or the LS release's 480 epochs) and epoch: not stated.
    'mlkd_cifar': {'resnet32x4,resnet8x4': 77.08, 'vgg13,vgg8': 75.18, 'wrn_40_2,wrn_40_1': 75.35,
                   'wrn_40_2,wrn_16_2': 76.63, 'resnet56,resnet20': 72.19, 'resnet110,resnet32': 74.11,
                   'resnet110,resnet20': 71.89, 'resnet32x4,ShuffleV2': 78.44, 'resnet32x4,wrn_16_2': 76.52,
                   'resnet32x4,wrn_40_2': 79.26, 'wrn_40_2,resnet8x4': 77.33, 'wrn_40_2,MobileNetV2': 70.78,
                   'vgg13,MobileNetV2': 70.57, 'ResNet50,MobileNetV2': 71.04},
    # SSKD's README (docs/sources.md [S14]): its SSKD rows, with its own teachers (e.g. resnet32x4 79.63);
    # epoch not stated.
    'sskd_cifar': {'wrn_40_2,wrn_16_2': 76.04, 'wrn_40_2,wrn_40_1': 76.13, 'resnet56,resnet20': 71.49,
                   'resnet32x4,resnet8x4': 76.20, 'vgg13,vgg8': 75.33, 'vgg13,MobileNetV2': 71.53,
                   'ResNet50,MobileNetV2': 72.57, 'ResNet50,vgg8': 75.76, 'resnet32x4,ShuffleV1': 78.44,
                   'resnet32x4,ShuffleV2': 78.61, 'wrn_40_2,ShuffleV1': 77.40},
    # The Tf-KD paper's numbers are for its own CIFAR networks, none of them in the zoo (configs/tfkd_cifar.py).
    'tfkd_cifar': {},
}
REPORTED_METRIC: dict[str, str] = {key: "unknown" for key in REPORTED}
REPORTED_NOTES: dict[str, dict[str, str]] = {
    'mlkd_cifar': {pair: f'MLKD+LS (`,ls`): {top1}' for pair, top1 in {
        'resnet32x4,resnet8x4': 78.28, 'vgg13,vgg8': 75.22, 'wrn_40_2,wrn_40_1': 75.56, 'wrn_40_2,wrn_16_2': 76.95,
        'resnet56,resnet20': 72.33, 'resnet110,resnet32': 74.32, 'resnet110,resnet20': 72.27,
        'resnet32x4,ShuffleV2': 78.76, 'resnet32x4,wrn_16_2': 77.53, 'resnet32x4,wrn_40_2': 79.66,
        'wrn_40_2,resnet8x4': 77.68, 'wrn_40_2,MobileNetV2': 71.61, 'vgg13,MobileNetV2': 70.94,
        'ResNet50,MobileNetV2': 71.19}.items()},
    'wkd_cifar': {'resnet32x4,resnet8x4': 'WKD-F 76.77, WKD-L+F 77.28; WKD-L with the release\'s CKA cost file',
                  'wrn_40_2,ShuffleV1': 'WKD-F 77.36, WKD-L+F 77.50; WKD-L with the release\'s CKA cost file'},
    'simkd_cifar': {'resnet32x4,resnet8x4': 'factor=4: 77.88, factor=8: 76.73 (its KD baseline: 74.42)',
                    'resnet32x4,vgg8': 'factor=4: 75.62, factor=8: 74.74 (its KD baseline: 72.73)'},
    'srd_cifar': {'resnet32x4,resnet8x4': "SimKD's runs: its KD baseline there is 74.42, not the CRD table's 73.33",
                  'resnet32x4,vgg8': "SimKD's runs: its KD baseline there is 72.73"},
    'dist_cifar': {
        'wrn_40_2,wrn_40_1': '74.43 ± 0.24', 'resnet56,resnet20': '71.75 ± 0.30',
        'resnet32x4,resnet8x4': '76.31 ± 0.19', 'ResNet50,MobileNetV2': '68.66 ± 0.23',
        'resnet32x4,ShuffleV1': '76.34 ± 0.18', 'resnet32x4,ShuffleV2': '77.35 ± 0.25'},
    'ickd_cifar': {pair: f'w/o KL (kd_weight=0): {top1}' for pair, top1 in {
        'wrn_40_2,wrn_16_2': 75.64, 'wrn_40_2,wrn_40_1': 74.33, 'resnet56,resnet20': 71.76,
        'resnet110,resnet20': 71.68, 'resnet110,resnet32': 73.89, 'resnet32x4,resnet8x4': 75.25,
        'vgg13,vgg8': 73.42}.items()},
}
