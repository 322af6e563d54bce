"""Production monitoring: one batch in, one decision record out.

`reproml monitor --batch <file | period>` resolves the batch (`batches`), loads the champion and
its own training reference (`champion`), runs the data-quality gate (`quality`), scores and stores
predictions (`scores`: P(positive), the predicted value, or for multiclass the predicted class and
each class's probability), measures data drift (`drift`) and, with labels, the change in quality
against the champion's test split (`concept`), decides (`decision`), and writes the record, the
Evidently HTML and the index page (`store`, `reports`); `run` wires these together. The record's
shape, and that of the monitoring flow's summary, is declared once in `records`.

Nothing here is imported at `reproml --help` time, and Evidently is imported only inside the
functions that run it (about 3-5 s of import), so listing records stays instant.
"""
