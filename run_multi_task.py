r"""Train EmBERT (multi-task BERT with task-embedded attention) on GLUE.

One GPU, the paper's run (60,000 steps of batch 32 over the eight GLUE tasks):
    python run_multi_task.py --seed 1 --output_dir saved/embert --tasks all --sample anneal --multi \
        --do_train --do_eval --do_lower_case --data_dir $GLUE_DIR/ --vocab_file $BERT_DIR/vocab.txt \
        --bert_config_file configs/embert_config.json --init_checkpoint $BERT_DIR/pytorch_model.bin \
        --max_seq_length 128 --train_batch_size 32 --learning_rate 2e-5 --num_train_epochs 25.0 \
        --gradient_accumulation_steps 1
Several GPUs (--train_batch_size stays the global batch):
    torchrun --nproc_per_node=8 run_multi_task.py <same flags>
CPU smoke run: add --no_cuda --tasks cola,mrpc,rte,sts,sst --num_train_epochs 2 --steps_per_epoch 20
"""
from cli import RESUME_HINT, exit_on_interrupt

with exit_on_interrupt(RESUME_HINT):  # a Ctrl-C while torch loads: one line, no traceback
    from methods import METHODS
    from multitask import main, parse_args

METHOD = METHODS["embert"]

if __name__ == "__main__":
    with exit_on_interrupt(RESUME_HINT):
        main(parse_args(__doc__), METHOD)
