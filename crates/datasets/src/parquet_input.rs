//! Parquet uploads. Parquet keeps its schema in a footer at the end of the file, so the upload is
//! spooled to a temporary file first (disk, not memory) and then read batch by batch.

use std::io::{self, BufRead};

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::input::{NumberedRecord, RawRecord, RecordSource};
use crate::read::{cell_at, columns_of};
use crate::schema::ColumnSpec;

pub struct ParquetRecords {
    columns: Vec<ColumnSpec>,
    reader: ParquetRecordBatchReader,
    batch: Option<RecordBatch>,
    row_in_batch: usize,
    record: u64,
    // Kept so the spooled file lives as long as the reader.
    _spool: tempfile::NamedTempFile,
}

impl ParquetRecords {
    pub fn spool(mut input: Box<dyn BufRead + Send>) -> Result<Self, String> {
        let mut spool = tempfile::NamedTempFile::new().map_err(|e| format!("cannot spool the upload: {e}"))?;
        io::copy(&mut input, spool.as_file_mut()).map_err(|e| format!("reading the upload: {e}"))?;
        let file = spool.reopen().map_err(|e| format!("cannot reopen the spooled upload: {e}"))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| format!("record 0: not a readable Parquet file: {e}"))?;
        let columns = columns_of(builder.schema())?;
        let reader = builder.with_batch_size(4096).build().map_err(|e| format!("reading Parquet: {e}"))?;
        Ok(ParquetRecords { columns, reader, batch: None, row_in_batch: 0, record: 0, _spool: spool })
    }
}

impl RecordSource for ParquetRecords {
    fn header(&self) -> Option<Vec<ColumnSpec>> {
        Some(self.columns.clone())
    }

    fn next_record(&mut self) -> io::Result<Option<NumberedRecord>> {
        loop {
            if let Some(batch) = &self.batch {
                if self.row_in_batch < batch.num_rows() {
                    let row = self.row_in_batch;
                    self.row_in_batch += 1;
                    self.record += 1;
                    let cells = batch.columns().iter().map(|array| cell_at(array.as_ref(), row)).collect();
                    return Ok(Some((self.record, Ok(RawRecord::Cells(cells)))));
                }
            }
            match self.reader.next() {
                None => return Ok(None),
                Some(Ok(batch)) => {
                    self.batch = Some(batch);
                    self.row_in_batch = 0;
                }
                Some(Err(error)) => return Err(io::Error::other(format!("reading Parquet: {error}"))),
            }
        }
    }
}
