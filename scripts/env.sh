# Sourced by every script that may start ROS processes or load models: DDS stays on this machine
# (loopback + shared memory only) and nothing is fetched from a model hub.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$here/config/fastdds_localhost.xml}"
export HF_HUB_OFFLINE=1
export PYTHONUNBUFFERED=1
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning,ignore::UserWarning}"
