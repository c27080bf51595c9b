package leadscore.peer;

import java.util.Map;
import org.apache.kafka.streams.state.RocksDBConfigSetter;
import org.rocksdb.BlockBasedTableConfig;
import org.rocksdb.Cache;
import org.rocksdb.LRUCache;
import org.rocksdb.Options;
import org.rocksdb.WriteBufferManager;

/**
 * One memory budget for every RocksDB instance of the process, as the Kafka Streams memory
 * management guide recommends. By default each store of each task gets its own 50 MiB block
 * cache and three 16 MiB memtables: with 6 tasks and 2 stores that is up to about 1.2 GiB
 * whatever the data, which would make the RocksDB runs' peak RSS a figure of the defaults.
 * Here one LRU cache (index and filter blocks included) bounds it, and the memtables count
 * against the same cache through a WriteBufferManager.
 *
 * <p>The budget is {@code rocksdb.total.mib} (default 256), of which a quarter goes to memtables.
 * Set through the Streams config, since Kafka Streams instantiates this class itself.
 */
public final class BoundedRocksDbConfig implements RocksDBConfigSetter {
    static final String TOTAL_MIB = "rocksdb.total.mib";

    private static Cache cache;
    private static WriteBufferManager writeBufferManager;

    private static synchronized void init(long totalBytes) {
        if (cache != null) return;
        // Shared by all stores, never closed per store: it lives as long as the process.
        cache = new LRUCache(totalBytes, -1, false, 0.1);
        writeBufferManager = new WriteBufferManager(totalBytes / 4, cache);
    }

    @Override
    public void setConfig(String storeName, Options options, Map<String, Object> configs) {
        Object v = configs.get(TOTAL_MIB);
        long mib = v == null ? 256 : Long.parseLong(v.toString());
        init(mib << 20);
        BlockBasedTableConfig table = (BlockBasedTableConfig) options.tableFormatConfig();
        table.setBlockCache(cache);
        table.setCacheIndexAndFilterBlocks(true);
        table.setCacheIndexAndFilterBlocksWithHighPriority(true);
        table.setPinTopLevelIndexAndFilter(true);
        options.setWriteBufferManager(writeBufferManager);
        options.setTableFormatConfig(table);
    }

    @Override
    public void close(String storeName, Options options) {
        // The cache and the write buffer manager are shared: nothing to close per store.
    }
}
