export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
D=tests/benchmarks/digits_transfer.py
timeout 400 python3 $D --device cuda --model conv4 --width 64 --algo maml --inner-steps 1 --inner-lr 0.4 --steps 4000 --meta-batch 32 > $OUT/conv4_maml1.log 2>&1 &
timeout 400 python3 $D --device cuda --model mlp --width 256 --algo maml --inner-steps 5 --inner-lr 0.1 --steps 8000 --meta-batch 64 > $OUT/mlp256_maml5.log 2>&1 &
timeout 400 python3 $D --device cuda --model conv4 --width 64 --algo maml --inner-steps 5 --inner-lr 0.1 --steps 3000 --meta-batch 32 > $OUT/conv4_maml5.log 2>&1 &
wait
tail -n 12 $OUT/*.log
