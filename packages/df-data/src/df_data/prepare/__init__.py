"""``dualforce data prepare``: real talking-head videos -> source clip folders for ``extract``.

Modules, in the order an input goes through them: ``inputs`` (folder or manifest), ``decode``
(25 fps by timestamps, 16 kHz audio on the same clock), ``faces`` (RetinaFace from a wheel),
``track`` (the speaker across frames), ``analysis`` (the first pass), ``vad`` (silero-vad),
``segments`` (pieces and filters), ``crop`` (one averaged LivePortrait-style box per clip),
``clip_writer`` (atomic clip folders), ``run`` (a corpus: records, failures, summary, workers),
``shards`` (a SLURM job array through submitit).
"""

from df_data.prepare.config import PrepareConfig
from df_data.prepare.decode import PrepareError
from df_data.prepare.run import prepare_corpus, summarise

__all__ = ["PrepareConfig", "PrepareError", "prepare_corpus", "summarise"]
