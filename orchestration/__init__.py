import warnings

from dagster import BetaWarning, PreviewWarning

# partitioned asset checks and observable sources are preview/beta APIs we use deliberately
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)
