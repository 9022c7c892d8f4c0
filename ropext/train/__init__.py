"""Fine-tuning a rescaled model on DeepSpeed ZeRO-3 (`ropext finetune`).

``data`` packs tokenised documents into training windows, ``loss`` is the chunked training loss,
``config`` reads and adapts the DeepSpeed config, ``trainer`` plans and runs the training. Importing this
package imports neither torch nor DeepSpeed.
"""
