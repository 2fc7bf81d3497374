"""mega-fairseq: Mega sequence models as a fairseq plugin.

Importing this package (``--user-dir mega_fairseq``) registers every model, architecture,
task and criterion with fairseq.
"""

MEGA_FAIRSEQ_PLUGIN = True
__version__ = "0.1.0"

from mega_fairseq import models  # noqa: E402,F401  (registers models and architectures)
from mega_fairseq import tasks  # noqa: E402,F401  (registers tasks)
from mega_fairseq import criterions  # noqa: E402,F401  (registers criterions)
