"""Pure learning code for FedLedger: models split into base/head, datasets, partitions, local
training, aggregation strategies, evaluation and the standalone simulation. No networking:
``node`` calls into ``fl``, never the other way round."""
