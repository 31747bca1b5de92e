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
SITE_INFO = "site-info"  # train replies: where the site computed (device, precision), for the run folder
WORD_COUNTS = "word-counts"  # reply to query.word_counts: words and their counts (omnirad.vocabulary)

# Message types beyond Flower's plain train and evaluate.
QUERY_SPECTRAL = "spectral"  # query.spectral: a site's spectral centroids
QUERY_FEATURE_MOMENTS = "feature_moments"  # query.feature_moments: count, sum, sum of squares of features
QUERY_TASK = "task"  # query.task: the task a site declares
TRAIN_SSL = "ssl"  # train.ssl: one round of self-supervised pretraining
QUERY_HEAD_STATISTICS = "head_statistics"  # query.head_statistics: sums for a closed-form head
QUERY_LOGIT_SCALE = "logit_scale"  # query.logit_scale: training loss sums of the closed-form head at a few scales
QUERY_WORD_COUNTS = "word_counts"  # query.word_counts: a site's training-caption words seen data.vocabulary-min-count times
QUERY_SECURE_SUM_KEYS = "secure_sum_keys"  # query.secure_sum_keys: a fresh public key and bounds (omnirad.secure_sum)
QUERY_SECURE_SUM_MASKED = "secure_sum_masked"  # query.secure_sum_masked: the site's values, masked
QUERY_CROSS_SITE_MODEL = "cross_site_model"  # query.cross_site_model: the site's own final tensors
QUERY_CROSS_SITE_SCORE = "cross_site_score"  # query.cross_site_score: scores of the models sent, on the site's validation split
CROSS_SITE_FINETUNED = "finetuned"  # reply to QUERY_CROSS_SITE_MODEL: its locally fine-tuned copy of the final model, whole
CROSS_SITE_MODEL_PREFIX = "model-"  # QUERY_CROSS_SITE_SCORE: one ArrayRecord per model, its whole trainable state
SECURE_SUM = "secure-sum"  # the secure-sum session's record, both ways (purpose, token, keys, bounds)

# Instructions (the config record of train and evaluate messages).
SERVER_ROUND = "server-round"  # set by Flower's strategies
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx (and the spectral strategy)
ENCODER_FINGERPRINT = "encoder-fingerprint"  # the server's weights_fingerprint; a site with other weights refuses
PRETRAINED_ENCODER = "ssl-encoder"  # simulation: the federated pretrained encoder's file
SSL_ROUNDS = "ssl-rounds"  # SSL rounds in all, so that schedules run over the whole pretraining
TASK = "task"  # a multi-task run: the task whose adapter a message carries
SPECTRAL_BANK, SPECTRAL_BANK_ROWS = "spectral-bank", "spectral-bank-rows"
FEATURE_MEAN, FEATURE_STD = "feature-mean", "feature-std"
LOGIT_SCALES = "logit-scales"  # query.logit_scale: the scales to score
VOCABULARY = "vocabulary"  # captioning on site files: the run's words (special tokens left out), in every message
RUN_KEY = "run-key"  # the run's own name, kept across resumes: the file of each site's state for the run
SIMULATION_STATE_DIR = "simulation-state-dir"  # simulation only: the run folder's site-state/, on the shared disk
TRAINED_SITES, TRAINED_ROUNDS = "trained-sites", "trained-rounds"  # train: the rounds each site has trained so far
ROUND_TOKEN = "round-token"  # train: a fresh random token per round, echoed in the reply's site-info

# Reply metrics the server reads besides the task's own.
NUM_EXAMPLES = "num-examples"  # the weight of a site's reply in aggregation
SITE_ID = "site-id"  # the site's number, for per-site records
PEAK_RSS_MB = "peak-rss-mb"
EPSILON = "epsilon"  # DP: the site's cumulative epsilon

# Error codes of a site's error reply; the reason is always a message the project wrote, never an
# exception's text (which could hold a site's paths or data): the full error stays in the site's log.
SITE_FAILED = 1000  # anything else went wrong at the site
BUDGET_SPENT = 1001  # its privacy budget is spent
WRONG_ENCODER = 1002  # its encoder weights differ from the server's
WRONG_TASK = 1003  # it was sent another task's adapter
CONFIG_REFUSED = 1004  # the site refused the run configuration (its log names the key)
DATA_UNREADABLE = 1005  # the site's data could not be read
WEIGHTS_UNREADABLE = 1006  # the site's encoder weights did not load
STATE_LOST = 1007  # its state for the run (privacy account) is missing, older than the server's count, or unreadable
WRONG_VERSION = 1008  # the site runtime runs another OmniRad-FL version than the app bundle's
RUNTIME_UNAVAILABLE = 1009  # the site runtime did not answer in time, or stopped while answering

# Node-config keys omnirad-client sets on a deployed SuperNode (never sent to the server).
NODE_SITE_ID, NODE_SITE_NAME, NODE_DATA_FILE = "site-id", "site-name", "data-file"
NODE_WEIGHTS, NODE_CACHE_DIR = "model-weights", "cache-dir"
NODE_TASK_NAME, NODE_TASK_KIND, NODE_NUM_CLASSES = "task-name", "task-kind", "num-classes"
NODE_DEVICE, NODE_PRECISION = "device", "precision"  # the site's own choice, from its site file
NODE_STATE_DIR = "site-state-dir"  # the site's state folder (omnirad.site_state), from its site file
