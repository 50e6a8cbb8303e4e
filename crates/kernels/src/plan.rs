//! One step's attention, planned on the host once for every layer: which rows go to the
//! tensor-core prompt kernel (`flash_attention.cu`, in tiles) and which to the CUDA-core kernel
//! (`paged_attention.cu`: decode rows, and every row where flash does not apply), how long the
//! decode kernel's key partitions are, and every index array the kernels read, packed so that
//! one upload carries them all. Pure Rust: CI tests it without a GPU, and the emulated kernels
//! run from the same plan.

/// The attention heads and the cache's block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    /// Sliding window (0: none).
    pub window: usize,
}

impl AttentionShape {
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// One sequence's new rows in the step: rows `first_row..first_row + new` of the batch sit at
/// positions `cached..cached + new`, over the blocks of `block_table`.
#[derive(Debug, Clone)]
pub struct SeqRows<'a> {
    pub first_row: usize,
    pub cached: usize,
    pub new: usize,
    pub block_table: &'a [u32],
}

/// The decode kernel's longest partition; its shared memory holds a partition's scores.
pub const MAX_PARTITION: usize = 512;
/// Query heads one decode thread block takes (`MAX_GROUP` in paged_attention.cu).
pub const MAX_GROUP: usize = 8;
/// Packed (token, head) rows per flash tile (`BM` in flash_attention.cu).
pub const FLASH_ROWS: usize = 64;

/// Whether the flash kernel takes this shape (`ferro_flash_supported` in the .cu file).
pub fn flash_supported(shape: &AttentionShape) -> bool {
    matches!(shape.head_dim, 16 | 32 | 64 | 128)
        && shape.heads.is_multiple_of(shape.kv_heads)
        && (1..=FLASH_ROWS).contains(&shape.group())
        && shape.block_size.is_multiple_of(8)
}

/// Tokens of one flash tile: the GQA group's heads of each share its 64 packed rows.
pub fn flash_tokens_per_tile(group: usize) -> usize {
    FLASH_ROWS / group
}

/// Head dimensions the decode kernel is built for.
pub fn decode_supported(shape: &AttentionShape) -> bool {
    matches!(shape.head_dim, 16 | 32 | 64 | 80 | 96 | 128 | 256)
        && shape.heads.is_multiple_of(shape.kv_heads)
}

/// The step's plan. Index arrays live in `indices` (u32), at the offsets named here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionPlan {
    pub shape: AttentionShape,
    pub rows: usize,
    pub seqs: usize,
    pub max_blocks: usize,
    /// Rows for the decode kernel.
    pub decode_rows: usize,
    /// Flash tiles (sequence, first row, tokens).
    pub tiles: usize,
    /// The decode kernel's partition length and count (for its longest row).
    pub partition: usize,
    pub partitions: usize,
    /// `block_tables [seqs, max_blocks] | row_seq [rows] | context_lens [rows] |
    /// decode [decode_rows] | tiles [tiles, 3] | slots [rows]`.
    pub indices: Vec<u32>,
}

/// Offsets into [`AttentionPlan::indices`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub block_tables: usize,
    pub row_seq: usize,
    pub context_lens: usize,
    pub decode: usize,
    pub tiles: usize,
    pub slots: usize,
}

impl AttentionPlan {
    /// Plans a step. `flash` says whether the tensor-core kernel may run (a 16-bit dtype on a
    /// build that has it); `thread_blocks` is how many decode thread blocks keep the GPU busy
    /// (about twice its multiprocessors): partitions shrink from 512 keys until the decode rows
    /// make that many, so that one long decode spreads over the GPU.
    pub fn new(
        shape: AttentionShape,
        seqs: &[SeqRows<'_>],
        flash: bool,
        thread_blocks: usize,
    ) -> Self {
        let flash = flash && flash_supported(&shape);
        let rows: usize = seqs.iter().map(|s| s.new).sum();
        let max_blocks = seqs
            .iter()
            .map(|s| s.block_table.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut tables = vec![0u32; seqs.len() * max_blocks];
        let mut row_seq = vec![0u32; rows];
        let mut context_lens = vec![0u32; rows];
        let mut slots = vec![0u32; rows];
        let mut decode = Vec::new();
        let mut tiles = Vec::new();
        let mut longest_decode = 0;
        for (i, seq) in seqs.iter().enumerate() {
            tables[i * max_blocks..][..seq.block_table.len()].copy_from_slice(seq.block_table);
            for r in 0..seq.new {
                let row = seq.first_row + r;
                let position = seq.cached + r;
                row_seq[row] = i as u32;
                context_lens[row] = position as u32 + 1;
                slots[row] = seq.block_table[position / shape.block_size] * shape.block_size as u32
                    + (position % shape.block_size) as u32;
            }
            // A sequence with several new rows is a prompt chunk (or a draft): flash tiles.
            if flash && seq.new > 1 {
                let per_tile = flash_tokens_per_tile(shape.group());
                let mut start = 0;
                while start < seq.new {
                    let tokens = per_tile.min(seq.new - start);
                    tiles.extend([i as u32, (seq.first_row + start) as u32, tokens as u32]);
                    start += tokens;
                }
            } else {
                for r in 0..seq.new {
                    decode.push((seq.first_row + r) as u32);
                    let context = seq.cached + r + 1;
                    let keys = if shape.window > 0 {
                        context.min(shape.window)
                    } else {
                        context
                    };
                    longest_decode = longest_decode.max(keys);
                }
            }
        }
        let (partition, partitions) =
            decode_partitions(&shape, decode.len(), longest_decode.max(1), thread_blocks);
        let mut indices = tables;
        indices.extend(row_seq);
        indices.extend(context_lens);
        let decode_rows = decode.len();
        indices.extend(decode);
        let n_tiles = tiles.len() / 3;
        indices.extend(tiles);
        indices.extend(slots);
        Self {
            shape,
            rows,
            seqs: seqs.len(),
            max_blocks,
            decode_rows,
            tiles: n_tiles,
            partition,
            partitions,
            indices,
        }
    }

    /// Forces the decode kernel's partition length (tests of the multi-partition path).
    pub fn with_partition(mut self, partition: usize, longest: usize) -> Self {
        assert!((1..=MAX_PARTITION).contains(&partition));
        self.partition = partition;
        self.partitions = longest.div_ceil(partition).max(1);
        self
    }

    pub fn offsets(&self) -> Offsets {
        let block_tables = 0;
        let row_seq = block_tables + self.seqs * self.max_blocks;
        let context_lens = row_seq + self.rows;
        let decode = context_lens + self.rows;
        let tiles = decode + self.decode_rows;
        let slots = tiles + 3 * self.tiles;
        Offsets {
            block_tables,
            row_seq,
            context_lens,
            decode,
            tiles,
            slots,
        }
    }

    /// Floats of decode scratch: partial outputs, then maxima, then sums.
    pub fn scratch_len(&self) -> usize {
        if self.partitions <= 1 {
            return 0;
        }
        let parts = self.decode_rows * self.shape.heads * self.partitions;
        parts * self.shape.head_dim + 2 * parts
    }

    pub fn scale(&self) -> f32 {
        1.0 / (self.shape.head_dim as f32).sqrt()
    }
}

/// The longest partition (512, 256, 128 or 64 keys) that still gives `thread_blocks` decode
/// thread blocks, and how many partitions the longest row needs.
fn decode_partitions(
    shape: &AttentionShape,
    rows: usize,
    longest: usize,
    thread_blocks: usize,
) -> (usize, usize) {
    let head_parts = shape.group().div_ceil(MAX_GROUP);
    let per_partition = rows * shape.kv_heads * head_parts;
    let mut partition = MAX_PARTITION;
    while partition > 64 && per_partition * longest.div_ceil(partition) < thread_blocks {
        partition /= 2;
    }
    (partition, longest.div_ceil(partition).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mistral() -> AttentionShape {
        AttentionShape {
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            window: 0,
        }
    }

    #[test]
    fn prompt_chunks_become_tiles_and_decodes_stay_rows() {
        let (a, b, c) = ([3u32, 1, 4], [9u32, 2], [7u32, 5, 6, 8]);
        let seqs = [
            SeqRows {
                first_row: 0,
                cached: 40,
                new: 1,
                block_table: &a,
            },
            // 20 new rows at positions 5..25; Mistral's group of 4 puts 16 tokens in a tile.
            SeqRows {
                first_row: 1,
                cached: 5,
                new: 20,
                block_table: &b,
            },
            SeqRows {
                first_row: 21,
                cached: 60,
                new: 1,
                block_table: &c,
            },
        ];
        let plan = AttentionPlan::new(mistral(), &seqs, true, 1);
        assert_eq!((plan.rows, plan.decode_rows, plan.tiles), (22, 2, 2));
        let o = plan.offsets();
        let idx = &plan.indices;
        assert_eq!(&idx[o.decode..o.tiles], &[0, 21]);
        assert_eq!(&idx[o.tiles..o.slots], &[1, 1, 16, 1, 17, 4]);
        // Row 1 is position 5 of sequence 1: block 9 (its first), offset 5.
        assert_eq!(idx[o.row_seq + 1], 1);
        assert_eq!(idx[o.context_lens + 1], 6);
        assert_eq!(idx[o.slots + 1], 9 * 16 + 5);
        // Row 20 is position 24: its table's second block (2), offset 8.
        assert_eq!(idx[o.slots + 20], 2 * 16 + 8);
        // Tables padded to the longest (4 blocks).
        assert_eq!(
            &idx[o.block_tables..o.row_seq],
            &[3, 1, 4, 0, 9, 2, 0, 0, 7, 5, 6, 8]
        );
        assert_eq!(idx.len(), o.slots + plan.rows);
    }

    #[test]
    fn without_flash_every_row_is_a_decode_row() {
        let table = [0u32, 1];
        let seqs = [SeqRows {
            first_row: 0,
            cached: 0,
            new: 17,
            block_table: &table,
        }];
        let plan = AttentionPlan::new(mistral(), &seqs, false, 1);
        assert_eq!((plan.decode_rows, plan.tiles), (17, 0));
        // An unsupported head dimension turns flash off by itself.
        let odd = AttentionShape {
            head_dim: 80,
            ..mistral()
        };
        assert_eq!(AttentionPlan::new(odd, &seqs, true, 1).tiles, 0);
    }

    #[test]
    fn partitions_shrink_until_the_gpu_is_busy() {
        let table: Vec<u32> = (0..200).collect();
        let one = [SeqRows {
            first_row: 0,
            cached: 2999,
            new: 1,
            block_table: &table,
        }];
        // One row over 3,000 keys, 8 KV heads: 512-key partitions make 48 thread blocks, too
        // few for 264 (an H200's 132 SMs twice); 64-key ones make 376.
        let plan = AttentionPlan::new(mistral(), &one, true, 264);
        assert_eq!((plan.partition, plan.partitions), (64, 47));
        // A windowed model never looks past its window.
        let windowed = AttentionShape {
            window: 1000,
            ..mistral()
        };
        let plan = AttentionPlan::new(windowed, &one, true, 1);
        assert_eq!((plan.partition, plan.partitions), (512, 2));
        assert_eq!(
            plan.scratch_len(),
            2 * 32 * 128 + 2 * 2 * 32,
            "partials, then maxima and sums"
        );
    }
}
