"""What crosses the network between the server and the sites, by name: one place for every key.

Flower carries a message's content as named records: ``arrays`` (tensors), ``metrics`` (scalars)
and ``config`` (instructions), the names Flower's own strategies use. Inside them the keys are
kebab-case, as Flower's are (``server-round``). Nothing here imports Flower: the library, the
ClientApp and the ServerApp all read these names.
"""

from __future__ import annotations

# Records of a message's content (Flower's default names).
ARRAYS, METRICS, CONFIG = "arrays", "metrics", "config"
TEACHER = "teacher"  # SSL rounds: the server's teacher tensors, beside the student's arrays
DECLARATION = "declaration"  # reply to query.task: the task a site trains

# Message types beyond Flower's plain train and evaluate.
QUERY_SPECTRAL = "spectral"  # query.spectral: a site's spectral centroids
QUERY_FEATURE_MOMENTS = "feature_moments"  # query.feature_moments: count, sum, sum of squares of features
QUERY_TASK = "task"  # query.task: the task a site declares
TRAIN_SSL = "ssl"  # train.ssl: one round of self-supervised pretraining

# Instructions (the config record of train and evaluate messages).
SERVER_ROUND = "server-round"  # set by Flower's strategies
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx (and the spectral strategy)
ENCODER_FINGERPRINT = "encoder-fingerprint"  # the server's weights_fingerprint; a site with other weights refuses
PRETRAINED_ENCODER = "ssl-encoder"  # simulation: the federated pretrained encoder's file
SSL_ROUNDS = "ssl-rounds"  # SSL rounds in all, so that schedules run over the whole pretraining
TASK = "task"  # a multi-task run: the task whose adapter a message carries
SPECTRAL_BANK, SPECTRAL_BANK_ROWS = "spectral-bank", "spectral-bank-rows"
FEATURE_MEAN, FEATURE_STD = "feature-mean", "feature-std"

# Reply metrics the server reads besides the task's own.
NUM_EXAMPLES = "num-examples"  # the weight of a site's reply in aggregation
SITE_ID = "site-id"  # the site's number, for per-site records
PEAK_RSS_MB = "peak-rss-mb"
EPSILON = "epsilon"  # DP: the site's cumulative epsilon

# Error codes of a site's error reply.
BUDGET_SPENT = 1001  # its privacy budget is spent
WRONG_ENCODER = 1002  # its encoder weights differ from the server's
WRONG_TASK = 1003  # it was sent another task's adapter

# Node-config keys omnirad-client sets on a deployed SuperNode (never sent to the server).
NODE_SITE_ID, NODE_SITE_NAME, NODE_DATA_FILE = "site-id", "site-name", "data-file"
NODE_WEIGHTS, NODE_CACHE_DIR = "model-weights", "cache-dir"
NODE_TASK_NAME, NODE_TASK_KIND, NODE_NUM_CLASSES = "task-name", "task-kind", "num-classes"

# Keys of what a site keeps between rounds (Flower's context.state).
PERSONAL_STATE = "personal-adapter"  # personalization and spectral suffixes: the site's own tensors
PRIVACY_LEDGER = "privacy-ledger"  # DP: the site's accountant history
