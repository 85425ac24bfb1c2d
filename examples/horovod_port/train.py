"""Horovod's elastic PyTorch MNIST example, ported to ringfleet by changing the import.

Ported from horovod/horovod examples/elastic/pytorch/pytorch_mnist_elastic.py (Apache-2.0), with the
commit-every-N-batches of pytorch_synthetic_benchmark_elastic.py. Run it alone (``python train.py``), with torchrun,
or under the instance agent (``ringfleet submit examples/horovod_port/job.yaml``).

What changed from the Horovod original, and nothing else:
  1. ``import horovod.torch as hvd`` -> ``import training_worker as hvd``.
  2. Data: torchvision's MNIST (downloaded under a FileLock) -> scikit-learn's bundled 8x8 digits (nothing is
     downloaded), the last 297 images held out as the test set; ``Net`` takes 8x8 inputs (3x3 and 2x2 kernels,
     fc1 20 -> 50) and ``log_softmax`` names its dim.
  3. Sampler: ``DistributedSampler(num_replicas=hvd.size(), rank=hvd.rank())`` + ``DataLoader(batch_size=...)`` ->
     ``hvd.elastic.ElasticSampler(dataset, global_batch_size)`` + ``DataLoader(batch_sampler=...)``, passed to
     ``TorchState(sampler=...)`` so that commits and checkpoints hold the position in the epoch. The global batch
     is fixed when the job starts (``--batch-size`` x the starting world size) and stays so when workers come and
     go, so the mid-epoch bookkeeping (``steps_remaining``, ``enumerate``) goes: the loader resumes by itself.
  4. Learning rate: scaled by the starting world size as in Horovod, but ``on_state_reset`` keeps it there instead
     of rescaling to the new ``hvd.size()``: the global batch it was scaled for does not change.
  5. Commits every ``--batches-per-commit`` batches (from the synthetic benchmark) instead of every batch.
  6. Removed: ``--fp16-allreduce``/``Compression`` (the agent's ``--wire fp16`` compresses instead), ``--use-adasum``/
     ``op=hvd.Adasum``/``nccl_built``/``local_size`` (no Adasum), ``--data-dir``, and ``name=`` of ``hvd.allreduce``.
  7. Defaults: ``--epochs`` 10 -> 15, ``--lr`` 0.01 -> 0.1 (digits has ~12 batches an epoch where MNIST has ~900).
  8. ``size_average=False`` -> ``reduction="sum"`` (removed from torch); the test set is split with a plain
     ``DistributedSampler`` over the ring of the end of training.
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import torch.utils.data.distributed
from sklearn.datasets import load_digits

import training_worker as hvd

# Training settings
parser = argparse.ArgumentParser(description="PyTorch digits example (Horovod's elastic MNIST example, ported)")
parser.add_argument("--batch-size", type=int, default=64, help="input batch size per worker at the start (default: 64)")
parser.add_argument("--test-batch-size", type=int, default=1000, help="input batch size for testing (default: 1000)")
parser.add_argument("--epochs", type=int, default=15, help="number of epochs to train (default: 15)")
parser.add_argument("--lr", type=float, default=0.1, help="learning rate (default: 0.1)")
parser.add_argument("--momentum", type=float, default=0.5, help="SGD momentum (default: 0.5)")
parser.add_argument("--no-cuda", action="store_true", default=False, help="disables CUDA training")
parser.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
parser.add_argument("--log-interval", type=int, default=10, help="batches between logging training status")
parser.add_argument("--batches-per-commit", type=int, default=5, help="batches per commit of the elastic state")

args = parser.parse_args()
args.cuda = not args.no_cuda and torch.cuda.is_available()

# Horovod: initialize library.
hvd.init()
torch.manual_seed(args.seed)

if args.cuda:
    # Horovod: pin GPU to local rank.
    torch.cuda.set_device(hvd.local_rank())
    torch.cuda.manual_seed(args.seed)

# Horovod: limit # of CPU threads to be used per worker.
torch.set_num_threads(1)

digits = load_digits()
images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
images = (images - images.mean()) / images.std()
labels = torch.tensor(digits.target, dtype=torch.long)
train_dataset = torch.utils.data.TensorDataset(images[:-297], labels[:-297])
test_dataset = torch.utils.data.TensorDataset(images[-297:], labels[-297:])

# ringfleet: the global batch stays what it is at the start, whatever the world size later.
train_sampler = hvd.elastic.ElasticSampler(train_dataset, args.batch_size * hvd.size(), seed=args.seed)
train_loader = torch.utils.data.DataLoader(train_dataset, batch_sampler=train_sampler)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=3)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=2)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(20, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 20)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


model = Net()

# Scale the learning rate as the global batch is scaled (by the starting world size).
lr_scaler = hvd.size()

if args.cuda:
    # Move model to GPU.
    model.cuda()

# Horovod: scale learning rate by lr_scaler.
optimizer = optim.SGD(model.parameters(), lr=args.lr * lr_scaler, momentum=args.momentum)


def metric_average(val):
    tensor = torch.tensor(val)
    avg_tensor = hvd.allreduce(tensor)
    return avg_tensor.item()


@hvd.elastic.run
def train(state):
    # post synchronization event (worker added, worker removed) init ...
    for state.epoch in range(state.epoch, args.epochs + 1):  # noqa: B020 (Horovod's idiom: the epoch is state)
        state.model.train()
        train_sampler.set_epoch(state.epoch)  # a half-done epoch goes on where its last commit left it

        for data, target in train_loader:
            if args.cuda:
                data, target = data.cuda(), target.cuda()
            state.optimizer.zero_grad()
            output = state.model(data)
            loss = F.nll_loss(output, target)
            loss.backward()
            state.optimizer.step()
            if state.batch % args.log_interval == 0:
                done = state.batch * train_sampler.global_batch_size
                print(
                    f"Train Epoch: {state.epoch} [{done}/{len(train_dataset)} "
                    f"({100.0 * done / len(train_dataset):.0f}%)]\tLoss: {loss.item():.6f}",
                    flush=True,
                )
            state.batch += 1
            if state.batch % args.batches_per_commit == 0:
                state.commit()
        state.batch = 0


def test():
    model.eval()
    test_sampler = torch.utils.data.distributed.DistributedSampler(
        test_dataset, num_replicas=hvd.size(), rank=hvd.rank(), shuffle=False
    )
    test_loader = torch.utils.data.DataLoader(test_dataset, batch_size=args.test_batch_size, sampler=test_sampler)
    test_loss = 0.0
    test_accuracy = 0.0
    with torch.no_grad():
        for data, target in test_loader:
            if args.cuda:
                data, target = data.cuda(), target.cuda()
            output = model(data)
            # sum up batch loss
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            # get the index of the max log-probability
            pred = output.data.max(1, keepdim=True)[1]
            test_accuracy += pred.eq(target.data.view_as(pred)).cpu().float().sum().item()

    # Horovod: use test_sampler to determine the number of examples in this worker's partition.
    test_loss /= len(test_sampler)
    test_accuracy /= len(test_sampler)

    # Horovod: average metric values across workers.
    test_loss = metric_average(test_loss)
    test_accuracy = metric_average(test_accuracy)

    # Horovod: print output only on first rank.
    if hvd.rank() == 0:
        print(f"\nTest set: Average loss: {test_loss:.4f}, Accuracy: {100.0 * test_accuracy:.2f}%\n", flush=True)


# Horovod: wrap optimizer with DistributedOptimizer.
optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())


# adjust learning rate on reset
def on_state_reset():
    for param_group in optimizer.param_groups:
        param_group["lr"] = args.lr * lr_scaler


state = hvd.elastic.TorchState(model, optimizer, sampler=train_sampler, epoch=1, batch=0)
state.register_reset_callbacks([on_state_reset])
train(state)
test()
